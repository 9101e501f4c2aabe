"""Steps of the running task, reported to the process that shows the run's progress bar: the same
process, or the driver of a Dask cluster (through Dask's event topics), so that a long training or
retraining task shows signs of life wherever it runs."""
from __future__ import annotations

import time
from typing import Callable, Optional

_sink: Optional[Callable[[str], None]] = None
_last = [0.0]
EVERY_S = 1.0  # at most one report a second (the last step always)


def set_sink(sink: Optional[Callable[[str], None]]) -> None:
    """Where ``steps`` reports go in this process (None: nowhere)."""
    global _sink
    _sink = sink
    _last[0] = 0.0


def steps(done: int, total: int) -> None:
    """Report that ``done`` of ``total`` steps of the running task are finished (throttled)."""
    if _sink is None:
        return
    now = time.monotonic()
    if done < total and now - _last[0] < EVERY_S:
        return
    _last[0] = now
    _sink(f"{done}/{total} steps")
