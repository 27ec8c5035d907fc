"""Alarm and throttle state of the board, read from the source when a scrape or a client asks.

The flags are read on demand, not by the sampler: a handful of sysfs files
cost a scrape tens of microseconds, where reading them at the sample rate
would cost the sampler that much on every sample.  What a read cannot know,
since when a flag has been up, is remembered here: ``since`` is the
``time.monotonic()`` of the first read that saw it (the clock of
``/api/v1/samples``), so it is as fine as the board is watched.
"""

import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .sources.base import BoardAlarms, PowerSource, SensorReadError, now


@dataclass(frozen=True)
class Active:
    name: str
    rail: Optional[str]
    kind: str
    since: float


@dataclass(frozen=True)
class AlarmSnapshot:
    """One read: the board's files (None when the source has none) or why they could not be read."""

    board: Optional[BoardAlarms]
    active: List[Active] = field(default_factory=list)
    error: str = ""
    errors_total: int = 0

    def throttle(self) -> Dict[str, Dict[str, Dict[str, object]]]:
        """The ``throttle`` object of ``/api/v1/alarms``."""
        board = self.board
        if board is None:
            return {}
        return {
            "over_current": {
                kind: {"events": board.oc_events.get(kind), "throttle_enabled": board.oc_throttle_enabled.get(kind)}
                for kind in sorted(set(board.oc_events) | set(board.oc_throttle_enabled))
            },
            "thermal": {kind: {"state": cur, "max_state": top} for kind, (cur, top) in sorted(board.cooling.items())},
        }


class AlarmWatch:
    """Reads the source's alarm files and keeps since when each active one has been up."""

    def __init__(self, source: PowerSource):
        self.source = source
        self._lock = threading.Lock()
        self._since = {}  # type: Dict[str, float]
        self._errors = 0

    def read(self) -> AlarmSnapshot:
        with self._lock:
            try:
                board = self.source.read_alarms()
            except SensorReadError as exc:
                self._errors += 1
                return AlarmSnapshot(None, error=str(exc), errors_total=self._errors)
            if board is None:
                return AlarmSnapshot(None)
            t = now()
            up = [(a.name, a.rail, a.kind) for a in board.alarms if a.active]
            up += [("thermal " + kind, None, "thermal") for kind, (cur, _) in sorted(board.cooling.items()) if cur > 0]
            since = {name: self._since.get(name, t) for name, _, _ in up}
            self._since = since  # a flag that went down starts afresh when it comes back
            active = [Active(name, rail, kind, since[name]) for name, rail, kind in up]
            return AlarmSnapshot(board, active, errors_total=self._errors)
