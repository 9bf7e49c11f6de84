"""SIGINT/SIGTERM as a request to stop training cleanly after the current epoch."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """SIGINT/SIGTERM as a request to stop cleanly (for the command line; opt-in).

    While active (``with StopSignals(enabled=True) as sig``), the first SIGINT or
    SIGTERM only sets ``sig.signum`` and prints one line; the training loop checks it
    after each epoch, writes a checkpoint and ``status.json`` = ``interrupted`` and
    returns. A second signal raises ``KeyboardInterrupt`` at once (the epoch in flight
    is abandoned; the last checkpoint stays). Handlers are installed only in the main
    thread and restored on exit; disabled, nothing changes (a library caller keeps
    Python's default ``KeyboardInterrupt``).
    """

    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._outer: Any = None  # the handler this one replaced (see __exit__)

    @property
    def exit_code(self) -> int:
        """The shell convention 128 + signal number (130 SIGINT, 143 SIGTERM); 0 without a signal."""
        return 128 + self.signum if self.signum else 0

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        msg = (f"\nnclab: {signal.Signals(signum).name} received: finishing the current epoch, then writing a "
               "checkpoint (send it again to stop at once)\n")
        try:
            os.write(2, msg.encode())
        except OSError:
            pass

    def __enter__(self) -> "StopSignals":
        import signal
        import threading

        self._outer = None
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
            self._outer = self._old.get(signal.SIGTERM)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        # nested in an enclosing stop request (a sweep driver running this run inline, or a
        # sweep worker): pass the signal on, so a run that ended anyway still stops the sweep
        outer, self._outer = self._outer, None
        if self.signum is not None and outer is not None:
            owner = getattr(outer, "__self__", None)
            if isinstance(owner, StopSignals):
                if owner.signum is None:
                    owner.signum = self.signum
            elif getattr(outer, "nclab_stop_request", False):
                outer(self.signum, None)
