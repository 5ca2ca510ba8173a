"""``python -m kp_science.compiled_kernels`` (run by ``make install``) reaches every numba
kernel of kp, so a fresh install compiles each one once, there."""

import subprocess
import sys
import textwrap

import pytest

KERNEL_MODULES = [
    "kp_science.prediction.kernels",
    "kp_science.prediction.gram_kernels",
    "kp_science.prediction.solver",
    "kp_science.dcm.integrate",
    "kp_science.dcm.invert",
]

# In a fresh process: the kernels called from Python (a kernel called only from other kernels
# is compiled, and cached, with its callers) that have no compiled signature after
# compile_kernels()
SCRIPT = textwrap.dedent(f"""
    import importlib, inspect, re
    from numba.core.registry import CPUDispatcher
    from kp_science.compiled_kernels import compile_kernels
    compile_kernels()
    kernels = {{
        f"{{name}}.{{attr}}": value
        for name in {KERNEL_MODULES!r}
        for attr, value in vars(importlib.import_module(name)).items()
        if isinstance(value, CPUDispatcher)
    }}
    sources = {{k: inspect.getsource(v.py_func) for k, v in kernels.items()}}
    def called_by_a_kernel(key):
        name = key.rsplit(".", 1)[1]
        return any(re.search(rf"\\b{{name}}\\(", s) for k, s in sources.items() if k != key)
    entries = [k for k in kernels if not called_by_a_kernel(k)]
    print(len(kernels), len(entries))
    print(" ".join(k for k in entries if not kernels[k].signatures))
""")


@pytest.mark.slow  # a fresh process running two tiny analyses (~10 s)
def test_every_kernel_is_compiled():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts, missed = (done.stdout.splitlines() + [""])[:2]
    kernels, entries = map(int, counts.split())
    assert kernels >= 30 and entries >= 5, done.stdout  # the modules' kernels were found
    assert missed == "", f"kernels compile_kernels does not reach: {missed}"
