//! The Python tools under tools/ say which packages to install, in one line and with exit code 2,
//! instead of a ModuleNotFoundError traceback. Each tool is started with `python3 -S` (no
//! site-packages), so its third-party packages are missing whatever this machine has installed.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// (tool, a package its hint must name)
const TOOLS: &[(&str, &str)] = &[
    ("tools/trace_transformers.py", "torch"),
    ("tools/trace_llamacpp.py", "numpy"),
    ("tools/golden/make_quant_vectors.py", "gguf"),
    ("tools/golden/make_iq_grids.py", "gguf"),
    ("tools/golden/make_iq_vectors.py", "gguf"),
    ("tools/golden/make_iq_encode.py", "llama-cpp-python"),
    ("tools/golden/make_qwen3_golden.py", "transformers"),
    ("tools/golden/make_qwen3moe_golden.py", "transformers"),
    ("tools/golden/make_llama_golden.py", "torch"),
    ("tools/golden/make_qwen2_golden.py", "torch"),
    ("tools/golden/make_tokenizer_golden.py", "transformers"),
];

#[test]
fn python_tools_give_an_install_hint_when_packages_are_missing() {
    for (tool, package) in TOOLS {
        let out = Command::new("python3")
            .args(["-S", tool, "--help"])
            .current_dir(ROOT)
            .output()
            .expect("python3 runs (the tools need it; every supported machine has it)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tool}: {err}");
        assert!(!err.contains("Traceback"), "{tool}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{tool}: {err}");
        assert!(
            err.contains("python3 -m pip install") && err.contains(package),
            "{tool}: {err}"
        );
    }
}

#[test]
fn the_hint_names_only_what_is_missing() {
    let code = "import sys; sys.argv = ['t.py']; sys.path.insert(0, 'tools'); \
                from pyreq import need; need('json', ('no_such_module_xyz', 'no-such-pip-name'))";
    let out = Command::new("python3")
        .args(["-c", code])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "t.py: missing Python package(s) no-such-pip-name; install with: python3 -m pip install no-such-pip-name"
    );
}
