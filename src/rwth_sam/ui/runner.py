"""Model work off the GUI thread, one job at a time, newest request wins.

Prompts arrive faster than a CPU can answer them: while a job runs, only the newest waiting job
of each kind is kept (older ones are dropped unseen). A waiting prediction runs before a waiting
embed-ahead, so scrolling never delays the answer to a click; embedding a 3D range ahead comes last.

One napari progress bar shows the runner's work: made when it gets busy, renamed for each job, and
closed once it has been idle a moment. (A bar per job cost the GUI thread 50 ms at every click.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import QObject, QTimer, Signal

from rwth_sam.ui.reporting import as_user_error

PREDICT = "predict"
AUTOMATIC = "automatic"
PROPAGATE = "propagate"
EMBED_AHEAD = "embed ahead"
EMBED_RANGE = "embed range"
_PRIORITY = (PREDICT, AUTOMATIC, PROPAGATE, EMBED_AHEAD, EMBED_RANGE)
IDLE_BEFORE_CLOSING_MS = 1500


class LatestJobRunner:
    """Runs jobs in napari thread workers; their results and errors come back on the GUI thread.

    Whatever a job or its result handler raises reaches ``on_error`` as a short message (see
    ``reporting``), never napari's traceback dialog. After ``shut_down`` nothing more runs or is
    handed back (the job in progress finishes on its own; its result is dropped).
    """

    def __init__(self, on_error: Callable[[Exception], None]):
        self._on_error = on_error
        self._worker = None
        self._pending: dict[str, tuple] = {}
        self._shut_down = False
        self._bar = None
        self._close_bar = QTimer(singleShot=True, interval=IDLE_BEFORE_CLOSING_MS)
        self._close_bar.timeout.connect(self._on_idle)

    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._pending)

    @property
    def has_waiting(self) -> bool:
        """A newer job is waiting: a long-running job should stop at its next safe point."""
        return bool(self._pending)

    def submit(
        self,
        kind: str,
        job: Callable[[], Any],
        on_result: Callable[[Any], None],
        description: str,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """Run ``job`` in a worker when the current one ends; ``on_finished`` follows success or error,
        or the job being dropped unrun (a newer one of its kind came first)."""
        if self._shut_down:
            return
        dropped = self._pending.get(kind)
        self._pending[kind] = (job, on_result, description, on_finished)
        if dropped is not None and dropped[3] is not None:
            self._handle(dropped[3], description)
        if self._worker is None:
            self._start_next()

    def shut_down(self) -> None:
        """The widget was closed: drop waiting jobs (running their ``on_finished``) and every later result."""
        dropped = list(self._pending.values())
        self._pending.clear()
        for _, _, description, on_finished in dropped:
            if on_finished is not None:
                self._handle(on_finished, description)
        self._shut_down = True
        self._close_bar.stop()
        self._on_idle()

    def _handle(self, callback: Callable, description: str, *args) -> None:
        """Run a result handler on the GUI thread; what it raises becomes a message."""
        try:
            callback(*args)
        except Exception as error:  # noqa: BLE001  (nothing may escape into Qt's event loop)
            self._on_error(as_user_error(error, description))

    def _returned(self, outcome: tuple[bool, Any], on_result: Callable, description: str) -> None:
        if self._shut_down:
            return
        ok, value = outcome
        if ok:
            self._handle(on_result, description, value)
        else:
            self._on_error(as_user_error(value, description))

    def _start_next(self) -> None:
        kind = next((k for k in _PRIORITY if k in self._pending), None)
        if kind is None:
            return
        job, on_result, description, on_finished = self._pending.pop(kind)
        self._close_bar.stop()
        worker = create_worker(_outcome_of(job), _ignore_errors=True)
        # shown from the event loop: napari's bar processes events, which must not happen inside a
        # mouse callback (its drag generator would be re-entered)
        worker.started.connect(lambda: self._show(description))
        worker.returned.connect(lambda outcome: self._returned(outcome, on_result, description))
        if on_finished is not None:
            worker.finished.connect(lambda: self._handle(on_finished, description))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_finished(self) -> None:
        self._worker = None
        self._start_next()
        if self._worker is None and not self._shut_down:
            self._close_bar.start()

    def _show(self, description: str) -> None:
        if self._shut_down:
            return
        if self._bar is None:
            self._bar = progress(total=0, desc=description)
        else:
            self._bar.set_description(description)

    def _on_idle(self) -> None:  # the timer only runs while no worker does (_start_next stops it)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _outcome_of(job: Callable[[], Any]) -> Callable[[], tuple[bool, Any]]:
    """``job`` returning (True, its result) or (False, the exception it raised).

    A worker whose job raised emits ``errored``, and napari's own handler of that signal fails
    under PySide6 (a TypeError in the event loop at every error): jobs here never raise.
    """

    def run():
        try:
            return True, job()
        except Exception as error:  # noqa: BLE001  (handed to the runner's on_error)
            return False, error

    return run


class SliceProgress(QObject):
    """Progress bar and Cancel button of a run over many slices.

    The worker reports each finished slice through ``advanced`` (Qt queues it to the GUI thread,
    where the bar moves) and asks ``cancel_requested.is_set`` between slices; Cancel sets it.
    """

    advanced = Signal(int, int)

    def __init__(self, cancel_button, status):
        super().__init__()
        self._cancel_button = cancel_button
        self._status = status
        self.cancel_requested = threading.Event()
        self._bar = None
        self.advanced.connect(self._on_advanced)
        cancel_button.changed.connect(lambda: self.request_cancel())

    @property
    def running(self) -> bool:
        return self._bar is not None

    def start(self, total: int, description: str) -> None:
        self.cancel_requested.clear()
        self._bar = progress(total=total, desc=description)
        self._cancel_button.enabled = True

    def request_cancel(self, quietly: bool = False) -> None:
        """Ask the run to stop at its next slice (``quietly``: without saying so in the status)."""
        if self._bar is None:
            return
        self.cancel_requested.set()
        if not quietly:
            self._status.value = "Cancelling…"

    def finish(self) -> None:
        self._cancel_button.enabled = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _on_advanced(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
