#!/usr/bin/env python3
"""Compile the CUDA kernels with NVRTC on a machine without a GPU.

NVRTC needs no device: this builds the same programs as src/backend/cuda/device.rs (the `core`
module: every file as it is; one module per block type: grids, decoders and matmul templates
with that type's family instantiated) for sm_90 and prints the compiler's log. A syntax or type
error then shows here in seconds instead of on the GPU host.

    pip download --no-deps nvidia-cuda-nvrtc-cu12 -d /tmp/nvrtc
    (cd /tmp/nvrtc && python3 -m zipfile -e *.whl x)
    python3 tools/nvrtc-check/check.py /tmp/nvrtc/x/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 [q4_k q6_k ...]

With PTXAS=/path/to/ptxas (from the nvidia-cuda-nvcc-cu12 wheel) each module's PTX is also
assembled for sm_90 with -v: registers and spills of every kernel, as the driver will build them.
With PTX_OUT=/some/dir each module's PTX is also written there as NAME.ptx (to read what a
change did to a kernel's instructions). With PTXAS, SASS_OUT=/some/dir and CUOBJDUMP=/path/to/
cuobjdump (the nvidia-cuda-cuobjdump wheel; it runs nvdisasm, from the nvidia-cuda-nvdisasm
wheel, found on PATH) each module's machine code for sm_90 is written there as NAME.sass: what
the GPU will execute, instruction by instruction. NVRTC_DEFINES="FALSIFIER_TIMELINE" builds the
modules as the binaries do with that switch on (FALSIFIER_CUDA_TIMELINE). NVRTC_ARCH=compute_80
compiles for an older card instead (the sm_90-only paths, programmatic dependent launch and
clusters, compiled out); PTXAS and SASS_OUT stay sm_90's.

Exit status: 0 when every module compiles, 1 otherwise.
"""
import ctypes
import os
import pathlib
import subprocess
import sys
import tempfile

# (FALSIFIER_CUDA_KERNELS: another copy of the sources, as the binaries take it)
KERNELS = pathlib.Path(os.environ.get("FALSIFIER_CUDA_KERNELS") or
                       pathlib.Path(__file__).resolve().parents[2] / "src/backend/cuda/kernels")
FILES = ["grids.cuh", "common.cuh", "route.cuh", "matmul.cu", "ops.cu", "attention.cu", "moe.cu"]  # device.rs FILES
DEFAULT_TYPES = ["f32", "q4_k", "q6_k", "q8_0"]


def compile_module(lib, name, src, arch="compute_90"):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"falsifier_{name}.cu".encode(), 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram: {rc}"
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    # NVRTC_DEFINES="FALSIFIER_TIMELINE": build as the binaries do with those switches on
    opts += [f"-D{d}".encode() for d in os.environ.get("NVRTC_DEFINES", "").split()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    out = log.value.decode(errors="replace")
    if rc == 0 and (os.environ.get("PTXAS") or os.environ.get("PTX_OUT")):
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        if os.environ.get("PTX_OUT"):
            (pathlib.Path(os.environ["PTX_OUT"]) / f"{name}.ptx").write_bytes(ptx.value)
    if rc == 0 and os.environ.get("PTXAS"):
        with tempfile.TemporaryDirectory() as d:
            path = pathlib.Path(d) / f"{name}.ptx"
            path.write_bytes(ptx.value)
            cubin = pathlib.Path(d) / f"{name}.cubin"
            r = subprocess.run([os.environ["PTXAS"], "-arch=sm_90", "-v", str(path), "-o", str(cubin)],
                               capture_output=True, text=True)
            out += r.stdout + r.stderr
            if r.returncode == 0 and os.environ.get("SASS_OUT") and os.environ.get("CUOBJDUMP"):
                r = subprocess.run([os.environ["CUOBJDUMP"], "-sass", str(cubin)], capture_output=True, text=True)
                (pathlib.Path(os.environ["SASS_OUT"]) / f"{name}.sass").write_text(r.stdout + r.stderr)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, out


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    lib = ctypes.CDLL(sys.argv[1])
    types = sys.argv[2:] or DEFAULT_TYPES
    files = [(KERNELS / f).read_text() for f in FILES]
    modules = [("core", "\n".join(files))]
    for t in types:
        modules.append((t, "\n".join(files[: FILES.index("matmul.cu") + 1]) + f"\nMATMUL_KERNELS({t}, T_{t.upper()})\n"))
    ok = True
    for name, src in modules:
        good, log = compile_module(lib, name, src, os.environ.get("NVRTC_ARCH", "compute_90"))
        ok &= good
        print(f"{name}: {'ok' if good else 'FAILED'}")
        if log.strip():
            print(log)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
