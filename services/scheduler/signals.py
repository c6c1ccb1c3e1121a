"""SIGTERM / SIGINT → a graceful scheduler stop (what systemd, Kubernetes and Ctrl-C send).

Ray's driver installs a SIGTERM handler that calls `sys.exit` wherever the main thread happens
to be, which tears the process down mid-loop (a native stack dump, exit code 15). While the
scheduler runs, these handlers replace it: the first signal asks the loop to stop (results
fetched are stored, in-flight jobs handed back, a summary printed); a second one stops waiting.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def graceful_stop(stop: Callable[[], None]) -> Iterator[list[str]]:
    """Within the block, the first stop signal calls `stop()`; the yielded list gets its name.

    Outside the main thread (tests, notebooks) signals cannot be caught: nothing is installed.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            raise KeyboardInterrupt(f"second stop signal ({name})")
        received.append(name)
        log.warning("%s received: storing fetched results and handing in-flight jobs back; send it again to "
                    "stop without waiting", name)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
