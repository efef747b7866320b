"""Stop a run on SIGTERM or SIGINT with an exception, so the entry point can say what finished and exit non-zero.

A cluster scheduler preempts a job with SIGTERM and reads exit status 0 as "done"; Lightning turns a SIGTERM inside
a fit into ``SystemExit(None)`` (status 0). Inside :func:`stop_on_signals` both signals raise :class:`Interrupted`
instead, wherever the run is: every file is written atomically (:mod:`hdm_lightning.io`), so a rerun resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "stop_on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):  # noqa: N818 (not an error of the program: a request to stop)
    """A stop signal arrived; ``finished`` says what the run had finished (set by the run that knows)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.finished: str | None = None

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT``."""
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """The shell's status of a process ended by the signal: 128 + its number (143 for SIGTERM)."""
        return 128 + self.signum


def _raise(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT raise :class:`Interrupted` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
