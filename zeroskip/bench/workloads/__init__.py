"""The registry of workloads. A new workload is one module here with a ``run(ctx) -> section`` function,
and one line in :data:`WORKLOADS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..settings import Context
from . import w1, w2, w3, w4, w5, w6


@dataclass(frozen=True)
class Workload:
    """One entry of :data:`WORKLOADS`: ``run(ctx)`` returns a section of the results.

    ``contention``: the workload also runs beside a busy process (see :mod:`zeroskip.bench.contention`).
    The runner tags every row with the configuration it ran in (``threads``, ``heap``, ``load``).

    A section is a dict with ``title``, ``kind`` (``"speed"``: rows from :func:`speed_row`; ``"sweep"``:
    W3's rows; ``"network"``: rows from :func:`network_row`; ``"streams"``: W6's comparisons) and
    ``rows``, optionally ``notes``; any
    other key (W1's ``breakdown`` and ``peer``) belongs to that one run and goes to its record in
    ``results["runs"]``.
    """

    title: str
    needs_video: bool
    run: Callable[[Context], dict]
    needs_models: bool = False
    contention: bool = False


# The registry of workloads.
WORKLOADS: dict[str, Workload] = {
    "W1": Workload("original layer on masked vtest frames", True, w1.run, contention=True),
    "W2": Workload("the same at 1080p", True, w2.run, contention=True),
    "W3": Workload("density sweep on synthetic frames, every mode", False, w3.run),
    "W4": Workload("inner layers with vtest masks", True, w4.run),
    "W5": Workload("whole networks on vtest frames", True, w5.run, needs_models=True, contention=True),
    "W6": Workload("many cameras: 16 streams through the whole pipeline", True, w6.run, needs_models=True),
}

