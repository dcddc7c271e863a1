"""A clean stop on Ctrl-C / SIGTERM (docs/harness.md "Parallel sweeps").

Inside `stop_on_signals`, the first SIGINT (or SIGTERM) only records a stop request; the training loop
(`train.run_loop`) reads it after each step, checkpoints and ends the run with status ``stopped``, and the
sweep starts no further run. A second signal raises KeyboardInterrupt at once (the user insists). Outside
the context the process keeps Python's default handling.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_STOP = threading.Event()
_REASON: list[str] = []


def request_stop(reason: str) -> None:
    """Ask the loop to checkpoint and stop after its current step (the first reason is kept)."""
    if not _STOP.is_set():
        _REASON[:] = [reason]
        _STOP.set()


def stop_requested() -> str | None:
    """The reason a stop was requested, else None."""
    return _REASON[0] if _STOP.is_set() and _REASON else None


def clear() -> None:
    _STOP.clear()
    _REASON.clear()


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Turn ``signals`` into a stop request while inside (a no-op off the main thread, where Python cannot
    install handlers); the request is cleared on entry and exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt
        request_stop(f"interrupted ({signal.Signals(signum).name})")

    clear()
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        clear()
