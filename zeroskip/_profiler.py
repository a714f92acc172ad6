"""Per-call records: ``zeroskip.profile()`` and the ``ZEROSKIP_VERBOSE`` stderr log."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class CallRecord:
    """One sparse convolution call.

    Attributes:
        name: qualified module name when called through a sparsified model, else ``None``.
        input_shape: shape of the input tensor.
        mode: the mode asked for (``"auto"``, ``"rows"``, ``"tiles"`` or ``"dense"``).
        chosen: what ran: ``"dense"``, ``"rows"``, ``"tiles"``, ``"fill"`` (all-zero input) or a
            ``"+"``-joined mix when images of one batch took different paths.
        active_fraction: fraction of the output that was computed (1.0 for dense).
        time_ms: wall time of the call in milliseconds.
        detail: the plan: the reason for dense, tile size and tile count, or row boxes; then the
            notes of the context the call ran in (``"autograd"``: recorded for gradients).
    """

    name: str | None
    input_shape: tuple[int, ...]
    mode: str
    chosen: str
    active_fraction: float
    time_ms: float
    detail: str = ""


@dataclass
class Profile:
    """Records collected inside a ``with zeroskip.profile() as prof:`` block."""

    records: list[CallRecord] = field(default_factory=list)

    def summary(self) -> str:
        """A plain-text table, one row per call, a total line, and why calls ran dense.

        Columns: ``module`` (qualified name in a sparsified model, ``-`` for a functional call),
        ``input`` shape, ``mode`` asked, ``ran`` (what ran), ``active`` (fraction of the output
        computed), ``ms`` (wall time) and ``plan or reason`` (the record's ``detail``).
        """
        header = (
            f"{'#':>4}  {'module':<28} {'input':<22} {'mode':<6} {'ran':<12} {'active':>7} {'ms':>9}  plan or reason"
        )
        lines = [header, "-" * len(header)]
        for index, r in enumerate(self.records):
            shape = "x".join(str(s) for s in r.input_shape)
            lines.append(
                f"{index:>4}  {(r.name or '-')[:28]:<28} {shape:<22} {r.mode:<6} {r.chosen[:12]:<12}"
                f" {r.active_fraction:>7.1%} {r.time_ms:>9.3f}  {r.detail}".rstrip()
            )
        total = sum(r.time_ms for r in self.records)
        lines.append("-" * len(header))
        lines.append(f"{len(self.records)} calls, {total:.3f} ms in zeroskip convolutions")
        lines.extend(self._dense_reasons())
        return "\n".join(lines)

    def _dense_reasons(self) -> list[str]:
        """One line per reason that sent whole calls to dense, with its count, then advice on autograd."""
        reasons = Counter(_reason(r.detail) for r in self.records if r.chosen == "dense")
        lines = [f"ran dense: {count} x {reason}" for reason, count in reasons.most_common()]
        if any(AUTOGRAD_NOTE in r.detail.split("; ") and r.name is not None for r in self.records):
            lines.append(
                "autograd: a sparsified model carries skipped regions from layer to layer only without"
                " gradients (torch.no_grad() or torch.inference_mode()); with them each layer skips only"
                " the zeros of its own input"
            )
        return lines


def _reason(detail: str) -> str:
    """A dense call's reason without the figures that vary from call to call ("sampled activity 0.93")."""
    return re.sub(r" \d+(\.\d+)?(?=$|[;,\s])", "", detail) or "-"


_lock = threading.Lock()
_profiles: list[Profile] = []
# The note of calls recorded for gradients (zeroskip.autograd).
AUTOGRAD_NOTE = "autograd"


class _Notes(threading.local):
    def __init__(self) -> None:
        self.stack: list[str] = []


_NOTES = _Notes()


@contextlib.contextmanager
def annotate(note: str) -> Iterator[None]:
    """Append ``note`` to the ``detail`` of every call recorded in this thread inside the block."""
    _NOTES.stack.append(note)
    try:
        yield
    finally:
        _NOTES.stack.pop()


def verbosity() -> int:
    """The ``ZEROSKIP_VERBOSE`` level: 0 (silent), 1 (one line per call) or 2 (with the plan)."""
    value = os.environ.get("ZEROSKIP_VERBOSE", "")
    return int(value) if value.isdigit() else 0


def recording() -> bool:
    """Whether calls must be timed: a profile is open or verbose output is on."""
    return bool(_profiles) or verbosity() > 0


def record(entry: CallRecord) -> None:
    if _NOTES.stack:
        entry.detail = "; ".join([entry.detail, *_NOTES.stack] if entry.detail else _NOTES.stack)
    with _lock:
        for profile_ in _profiles:
            profile_.records.append(entry)
    level = verbosity()
    if level:
        shape = "x".join(str(s) for s in entry.input_shape)
        line = (
            f"zeroskip,conv2d,{entry.name or '-'},{shape},mode={entry.mode},ran={entry.chosen},"
            f"active={entry.active_fraction:.4f},{entry.time_ms:.3f}ms"
        )
        if level >= 2 and entry.detail:
            line += f",{entry.detail}"
        print(line, file=sys.stderr)


@contextlib.contextmanager
def profile() -> Iterator[Profile]:
    """Record every zeroskip convolution call made inside the block.

    Example:
        >>> with zeroskip.profile() as prof:
        ...     model(frames)
        >>> print(prof.summary())
    """
    profile_ = Profile()
    with _lock:
        _profiles.append(profile_)
    try:
        yield profile_
    finally:
        with _lock:
            _profiles.remove(profile_)
