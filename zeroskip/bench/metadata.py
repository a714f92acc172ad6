"""Where the numbers come from: machine, versions, commit, threads, date and load."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess

import torch

from .. import __version__
from .settings import REPO, Settings


def _run_git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def metadata(settings: Settings) -> dict:
    """Where the numbers come from: machine, versions, commit, threads, date and load."""
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
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "zeroskip": __version__,
        "zeroskip_commit": commit,
        "zeroskip_uncommitted_changes": dirty,
        "load_average_start": load,
        "quick": settings.quick,
        "note": settings.note,
    }


def busy_note(meta: dict) -> str:
    """A warning when other processes competed for the cores during the run, else ``""``."""
    cores = meta["cpu_affinity"] or meta["cpu_count"] or 1
    loads = [load[0] for load in (meta["load_average_start"], meta["load_average_end"]) if load]
    if not loads or max(loads) <= cores:
        return ""
    return (f"the machine was busy: 1-minute load average up to {max(loads):.1f} on {cores} cores during the run."
            " Timings are unreliable, multi-threaded zeroskip ones most (its many short parallel operators each"
            " wait for descheduled threads); rerun on a quiet machine.")


