"""SIGTERM / SIGINT during training: finish the current call, checkpoint, stop cleanly.

Cluster schedulers send SIGTERM some time before they kill a job; Ctrl-C sends SIGINT.
While `Stop.on_signals` is active the first such signal only sets `Stop.signal`; the
epoch loop checks it after every compiled call, saves a mid-epoch checkpoint and raises
`errors.Interrupted`. A second SIGINT interrupts at once (KeyboardInterrupt).

`on_signals` nests: inside an active one (a sweep worker around its trials' `fit`) it
yields the same `Stop`, so a signal that arrives while a trial loads its data is seen by
that trial's first step, and one between trials by the sweep.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """Which signal asked training to stop (0: none)."""

    def __init__(self):
        self.signal = 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def _handle(self, signum, frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    @classmethod
    @contextlib.contextmanager
    def on_signals(cls, enabled: bool = True) -> Iterator[Stop]:
        """Catches SIGTERM and SIGINT for the duration, then restores the handlers.

        Only in the main thread (Python delivers signals there) and when `enabled`:
        a multi-process job keeps the default handlers, since one process stopping at a
        checkpoint the others do not take would leave them waiting.
        """
        global _active
        if _active is not None:  # an enclosing block already catches them
            yield _active
            return
        stop = cls()
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield stop
            return
        previous = {s: signal.signal(s, stop._handle) for s in _SIGNALS}
        _active = stop
        try:
            yield stop
        finally:
            _active = None
            for s, handler in previous.items():
                signal.signal(s, handler)


_active: Stop | None = None  # the Stop whose handlers are installed, if any
