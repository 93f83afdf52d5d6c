"""Every test is bounded in time: a hang fails the run instead of using up CI's 90 minutes.

pytest-timeout (the `timeout` settings in pyproject.toml) starts a clock for each test, fixtures included. Its
`thread` method is the one that always fires: a test stuck in C code (a gloo collective, a lock) never returns to
the interpreter to run the `signal` method's handler. That method ends the test process with `os._exit`, so
tests/conftest.py puts this clock in its place: on expiry it first kills every process the test started (see
process_tree.py), then lets pytest-timeout print the stacks and exit. Under `-n 2` xdist reports the crashed
worker's test as failed and starts a fresh worker for the rest.

The clock also stops while a test builds a cached side environment (`paused()`): a first run on a new machine
installs packages for minutes (lmms-eval's about 6 on 2 cores), once, with a bound of its own, and would
otherwise count against whichever test happened to need it first.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Optional

SET_UP_BOUND_S = 3600  # pip install / download of one cached side environment or tokenizer set


class Deadline:
    """A test's clock: calls ``expire`` once ``seconds`` of unpaused time have passed, unless cancelled first."""

    def __init__(self, seconds: float, expire: Callable[[], None], name: str):
        self.remaining = float(seconds)
        self._expire = expire
        self._paused = 0
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"deadline {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()

    def pause(self, step: int) -> None:
        with self._lock:
            self._paused += step

    def _run(self) -> None:
        last = time.monotonic()
        while not self._cancelled.wait(min(1.0, max(self.remaining, 0.01))):
            now = time.monotonic()
            with self._lock:
                if not self._paused:
                    self.remaining -= now - last
                expired = self.remaining <= 0
            last = now
            if expired:
                self._expire()
                return


current: Optional[Deadline] = None  # the running test's (one test at a time per process)


@contextmanager
def paused():
    """Stop the running test's clock for one-time set-up that has its own bound (SET_UP_BOUND_S)."""
    deadline = current
    if deadline is not None:
        deadline.pause(+1)
    try:
        yield
    finally:
        if deadline is not None:
            deadline.pause(-1)
