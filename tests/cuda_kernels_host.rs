//! The CUDA kernels' source, checked without a GPU: tools/cuda-host-check compiles the device
//! decoders with the host C++ compiler and proves the 8-value decoders (what the matmul
//! kernels use) bit-exact against the 1-value ones (what the GPU tests check against gguf-py),
//! then type-checks every kernel file, and runs two kernel functions on the host: the router's
//! integer top-k keys against its float order, and the Q4_K one-row dot on its scaled input
//! against the subtracting one. CI has no GPU; this keeps the kernels honest there.

use std::process::Command;

#[test]
fn device_decoders_and_kernel_sources_pass_the_host_check() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/cuda-host-check/run.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{script} failed (it needs a C++17 compiler as `c++` or $CXX):\n{text}"
    );
    for ty in ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "F16", "BF16"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(ty) && l.contains("bit for bit")),
            "no bit-exact line for {ty}:\n{text}"
        );
    }
    for ran in [
        "topk_key == topk_before on",
        "q4k scaled dot == plain dot on",
    ] {
        assert!(
            text.contains(ran),
            "the host check did not report `{ran}`:\n{text}"
        );
    }
    assert!(text.contains("host syntax check ok"), "{text}");
}
