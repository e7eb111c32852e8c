"""One-line install hints instead of tracebacks when a tool's Python packages are missing.

Every tool imports this first and calls `need(...)` before its heavy imports, so that
`python3 tools/trace_transformers.py` on a machine without torch says what to install and exits 2
(bad environment, like falsifier's own exit code for bad input) instead of a ModuleNotFoundError.
"""
import importlib.util
import os
import sys


def need(*packages):
    """Each package is an import name, or an (import name, pip name) pair when they differ."""
    missing = []
    for p in packages:
        module, pip_name = p if isinstance(p, tuple) else (p, p)
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    if missing:
        tool = os.path.basename(sys.argv[0]) or "this tool"
        sys.stderr.write(
            f"{tool}: missing Python package(s) {', '.join(missing)}; "
            f"install with: python3 -m pip install {' '.join(missing)}\n"
        )
        sys.exit(2)
