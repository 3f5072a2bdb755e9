"""SIGTERM and SIGINT during a run: a clean, non-zero, resumable stop.

SLURM sends SIGTERM before a job's time limit, Ctrl-C sends SIGINT. Inside training the stop waits for the end
of the current batch (nothing half-written; the run folder keeps the checkpoint of its last whole epoch, from
which the same command resumes exactly); outside training, or at a second signal, it is immediate. Either way
:class:`Interrupted` propagates, and the command exits with 128 + the signal number (143, 130).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run was stopped by a signal; starting the same command again resumes it."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


class SignalStop:
    """Records SIGTERM/SIGINT while installed; raises :class:`Interrupted` at once unless deferring."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = signum
        if not (self.deferring and first):
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal came in (called between batches)."""
        if self.received is not None:
            raise Interrupted(self.received)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside the body a first signal only marks the stop; :class:`StopAtBatchEnd` acts on it."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        self.check()


@contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """Install the SIGTERM and SIGINT handlers for the body (main thread only; elsewhere they stay as they are)."""
    stop = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.handle) for signum in SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopAtBatchEnd(L.Callback):
    """Ends training at the end of the batch during which a signal came in (training or validation)."""

    def __init__(self, stop: SignalStop) -> None:
        self.stop = stop

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.stop.check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.stop.check()
