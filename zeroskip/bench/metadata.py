"""Where the numbers come from: machine, versions, commit, threads, date and load."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess

import torch

from .. import __version__
from .contention import load_average
from .settings import REPO, Settings


def _run_git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def native_executor() -> str:
    """Whether zeroskip's compiled code runs here: ``"used"``, or ``"not used: <why>"``."""
    from ..engine import native

    reason = native.unavailable_reason()
    return "used" if reason is None else f"not used: {reason}"


def metadata(settings: Settings, default_threads: int) -> dict:
    """Where the numbers come from: machine, versions, commit, threads, heap modes, date and load.

    Args:
        settings: the run's settings.
        default_threads: torch's thread count before the suite set any (the contention runs use it
            unless the settings say otherwise).
    """
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    commit = _run_git("rev-parse", "HEAD") if (REPO / ".git").exists() else None
    dirty = bool(_run_git("status", "--porcelain", "--untracked-files=no", "--", "zeroskip")) if commit else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": list(settings.threads),
        "torch_default_threads": default_threads,
        "contention_threads": (settings.contention_threads or default_threads) if settings.contention else None,
        "heap_modes": list(settings.heaps),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "native": native_executor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "zeroskip": __version__,
        "zeroskip_commit": commit,
        "zeroskip_uncommitted_changes": dirty,
        "load_average_start": load_average(),
        "quick": settings.quick,
        "note": settings.note,
    }
