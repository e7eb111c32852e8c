//! The `falsifier` command. Thin: parsing and dispatch live in the library's `cli` module.

fn main() -> std::process::ExitCode {
    falsifier::cli::main()
}
