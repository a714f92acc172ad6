"""Memory safety of the native executor, scan, carry maps and max pooling: built with AddressSanitizer
and driven from numpy (PyTorch does not load under it here), any read or write outside their
buffers, the input, the output, the weights, the activity maps or the background fails the run."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "zeroskip" / "engine"
HARNESS = Path(__file__).with_name("native_harness.py")


def _asan_runtime(compiler: str) -> str | None:
    done = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = done.stdout.strip()
    return path if done.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def test_native_code_stays_inside_its_memory(tmp_path):
    compiler = shutil.which("gcc")
    runtime = _asan_runtime(compiler) if compiler else None
    if runtime is None:
        pytest.skip("needs gcc with AddressSanitizer (libasan)")
    library = tmp_path / "engine-asan.so"
    subprocess.run(
        [compiler, "-O1", "-g", "-march=native", "-fsanitize=address", "-fno-omit-frame-pointer", "-fopenmp",
         "-shared", "-fPIC", *map(str, sorted(ENGINE.glob("*.c"))), "-o", str(library)],
        check=True, capture_output=True, timeout=120,
    )
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0"}
    done = subprocess.run([sys.executable, str(HARNESS), str(library), "150"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "150 cases ok" in done.stdout


# Builds this machine does not take by itself: threads of its own where the compiler has no OpenMP
# (_parallel.c), and the kernels of CPUs with AVX2 but no AVX-512, and with neither.
BUILDS = {
    "pthread": ["-march=native", "-pthread"],
    "avx2": ["-march=native", "-mno-avx512f", "-fopenmp"],
    "generic": ["-march=x86-64", "-fopenmp"],
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_native_code_in_other_builds(build, tmp_path):
    """The same outputs at 1 to 3 threads, checked against the harness's numpy reference."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler")
    if build != "pthread" and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 instruction sets")
    library = tmp_path / f"engine-{build}.so"
    subprocess.run(
        [compiler, "-O2", *BUILDS[build], "-shared", "-fPIC", *map(str, sorted(ENGINE.glob("*.c"))),
         "-o", str(library)],
        check=True, capture_output=True, timeout=120,
    )
    assert (b"GOMP" in library.read_bytes()) == (build != "pthread")
    done = subprocess.run([sys.executable, str(HARNESS), str(library), "40"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "40 cases ok" in done.stdout
