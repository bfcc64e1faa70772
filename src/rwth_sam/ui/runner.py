"""Model work off the GUI thread, one job at a time, newest request wins.

Prompts arrive faster than a CPU can answer them: while a job runs, only the newest waiting job
of each kind is kept (older ones are dropped unseen). A waiting prediction runs before a waiting
embed-ahead, so scrolling never delays the answer to a click; embedding a 3D range ahead comes last.

One napari progress bar shows the runner's short jobs: made when it gets busy, renamed for each job,
and closed once it has been idle a moment. (A bar per job cost the GUI thread 50 ms at every click.)
A long run (``submit_run``: an automatic slice or volume, a 3D propagation) is a napari generator
worker with a bar of its own, driven by its yields and closed by napari when it ends; its ``quit()``
is *Cancel*. A job that may download the model owns a ``JobBar``: made when the job is submitted,
closed when it ends however it ends, dropped unrun too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import Container, ProgressBar, PushButton
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from psygnal import Signal as EventedSignal
from qtpy.QtCore import QTimer

from rwth_sam.core.models.device import release_freed_memory
from rwth_sam.ui.reporting import as_user_error

PREDICT = "predict"
AUTOMATIC = "automatic"
PROPAGATE = "propagate"
EMBED_AHEAD = "embed ahead"
EMBED_RANGE = "embed range"
_PRIORITY = (PREDICT, AUTOMATIC, PROPAGATE, EMBED_AHEAD, EMBED_RANGE)
IDLE_BEFORE_CLOSING_MS = 1500

Step = Callable[[int, int], None]  # step(done, total), the core's on_batch / on_slice


class Run:
    """A long run's handle on the GUI thread: ``quit()`` is *Cancel* (the run stops at its next
    step and still hands back what it finished); ``advanced(done, total)`` follows its steps."""

    advanced = EventedSignal(int, int)

    def __init__(self):
        self.stop_requested = threading.Event()

    def quit(self) -> None:
        self.stop_requested.set()


class PanelRun:
    """A panel's one run at a time: its start buttons wait while it goes; ``row`` is its progress bar and
    *Cancel* side by side, for the panel to show next to its run buttons (napari's own bars are in its
    activity dock, out of sight). *Cancel* is the run's ``quit()`` (said in the status line;
    ``cancel()`` is the quiet form, for the widget)."""

    def __init__(
        self, runner: LatestJobRunner, kind: str, start_buttons, say: Callable[[str], None],
        reveal: Callable[[Container], None] | None = None,
    ):  # fmt: skip
        self._runner, self._kind, self._start_buttons, self._say = runner, kind, start_buttons, say
        self._reveal = reveal  # scrolls the dock to the row when a run starts
        self.current: Run | None = None
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.row = Container(layout="horizontal", labels=False, widgets=[self.progress, self.cancel_button])
        self.row.margins = (0, 0, 0, 0)
        self.cancel_button.changed.connect(self._on_cancel)

    def start(self, job, on_result, description: str, total: int, bar=None, on_finished=None, cancellable=True) -> Run:
        """``runner.submit_run`` for this panel; ``on_finished`` follows the run's end, however it ends.
        A run started from the result handler of the one before (writing its result) follows it as the
        panel's run: the buttons wait on until it ends too."""

        def finished() -> None:
            if self.current is run:
                self.current = None
                self._show_running(False)
            if on_finished is not None:
                on_finished()

        run = self.current = self._runner.submit_run(self._kind, job, on_result, description, total, finished, bar=bar)
        run.advanced.connect(lambda done, total: self._show_progress(run, done, total))
        self.progress.max, self.progress.value = max(1, total), 0
        self.progress.tooltip = description
        self._show_running(True, cancellable)
        if self._reveal is not None:
            self._reveal(self.row)
        return run

    def cancel(self, *_) -> None:
        """Stop the run at its next step, quietly."""
        if self.current is not None:
            self.current.quit()

    def _on_cancel(self, *_) -> None:
        if self.current is not None:
            self._say("Cancelling…")
            self.cancel()

    def _show_progress(self, run: Run, done: int, total: int) -> None:
        if run is not self.current:
            return
        self.progress.max = max(1, total)
        self.progress.value = min(done, self.progress.max)

    def _show_running(self, running: bool, cancellable: bool = True) -> None:
        for button in self._start_buttons:
            button.enabled = not running
        self.cancel_button.enabled = running and cancellable
        self.progress.visible = running


class JobBar:
    """The progress bar of a job that may download (the model's weights), for the download to fill
    from the worker. The runner opens it when the job is submitted, from the event loop (napari's
    bar processes events, which must not happen inside a mouse callback), and closes it when the
    job ends, however it ends: a job dropped unrun leaves no bar behind."""

    def __init__(self, description: str):
        self.description = description
        self._bar: progress | None = None
        self._submitted = self._closed = False
        self._settled = threading.Event()  # opened, or closed before it was

    def _open_soon(self) -> None:
        self._submitted = True
        QTimer.singleShot(0, self._open)

    def _open(self) -> None:
        if not self._closed:
            bar = progress(desc=self.description)  # napari processes events here: the job may end meanwhile
            if self._closed:
                bar.close()
            else:
                self._bar = bar
        self._settled.set()

    def _close(self) -> None:
        self._closed = True
        self._settled.set()
        if self._bar is not None:  # (not `if bar`: a bar of unknown length has no truth value)
            self._bar.close()
            self._bar = None

    def bar(self) -> progress | None:
        """In the job's worker: the bar, once the event loop has made it (none for a job run
        without the runner)."""
        if self._submitted:
            self._settled.wait()
        return self._bar


class _RunWorker(GeneratorWorker):
    """napari's generator worker, except that ``quit()`` (napari's own cancel button calls it too)
    asks the run to stop at its next step, and the run's result still comes back: napari's would
    drop it, and a cancelled volume keeps its finished slices."""

    def __init__(self, func, run: Run, *args, **kwargs):
        super().__init__(func, run, *args, **kwargs)
        self._run = run

    def quit(self) -> None:
        self._run.quit()


@dataclass
class _Job:
    job: Callable
    on_result: Callable[[Any], None]
    description: str
    on_finished: Callable[[], None] | None
    run: Run | None = None  # a long run's handle (then job takes step and should_stop)
    total: int = 0


class LatestJobRunner:
    """Runs jobs in napari thread workers; their results and errors come back on the GUI thread.

    Whatever a job or its result handler raises reaches ``on_error`` as a short message (see
    ``reporting``), never napari's traceback dialog. After ``shut_down`` nothing more runs or is
    handed back (the job in progress finishes on its own; its result is dropped).
    """

    def __init__(self, on_error: Callable[[Exception], None]):
        self._on_error = on_error
        self._worker = None
        self._pending: dict[str, _Job] = {}
        self._beside: set = set()  # the workers of run_beside going
        self._shut_down = False
        self._bar = None
        self._close_bar = QTimer(singleShot=True, interval=IDLE_BEFORE_CLOSING_MS)
        self._close_bar.timeout.connect(self._on_idle)
        self._close_bar.timeout.connect(release_freed_memory)  # idle a moment: nothing waits on it

    @property
    def busy(self) -> bool:
        """A job runs or waits, or a run beside them (``run_beside``) goes."""
        return self._worker is not None or bool(self._pending) or bool(self._beside)

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
        bar: JobBar | None = None,
    ) -> None:
        """Run ``job`` in a worker when the current one ends; ``on_finished`` follows success or error,
        or the job being dropped unrun (a newer one of its kind came first). ``bar`` is the job's own
        (a download's), open from now until then."""
        if self._shut_down:
            return
        self._queue(kind, _Job(job, on_result, description, on_finished), bar)

    def _queue(self, kind: str, job: _Job, bar: JobBar | None) -> None:
        if bar is not None:
            bar._open_soon()
            job.on_finished = _closing(bar, job.on_finished)
        dropped = self._pending.get(kind)
        self._pending[kind] = job
        if dropped is not None and dropped.on_finished is not None:
            self._handle(dropped.on_finished, job.description)
        if self._worker is None:
            self._start_next()

    def submit_run(
        self,
        kind: str,
        job: Callable[[Step, Callable[[], bool]], Any],
        on_result: Callable[[Any], None],
        description: str,
        total: int,
        on_finished: Callable[[], None] | None = None,
        bar: JobBar | None = None,
    ) -> Run:
        """Like ``submit``, for a run of ``total`` steps: ``job(step, should_stop)`` hands both to the
        core, which calls ``step(done, total)`` after each step and stops when ``should_stop()``."""
        run = Run()
        if not self._shut_down:
            self._queue(kind, _Job(job, on_result, description, on_finished, run, total), bar)
        return run

    def run_beside(
        self,
        job: Callable[[Step], Any],
        on_result: Callable[[Any], None],
        description: str,
        total: int,
        on_finished: Callable[[], None],
    ) -> None:
        """Run ``job(step)``, work without a model (saving labels), in a worker of its own beside the
        model's jobs, so that clicks are answered meanwhile; with a progress bar of ``total`` steps,
        results and errors handed back as ``submit_run``'s."""
        worker = create_worker(
            _steps_of, Run(), lambda step, should_stop: job(step), _worker_class=_RunWorker, _ignore_errors=True,
            _progress={"total": total, "desc": description},
        )  # fmt: skip
        worker.returned.connect(lambda outcome: self._returned(outcome, on_result, description))
        worker.finished.connect(lambda: self._handle(on_finished, description))
        worker.finished.connect(lambda: self._beside.discard(worker))
        self._beside.add(worker)
        worker.start()

    def shut_down(self) -> None:
        """The widget was closed: drop waiting jobs (running their ``on_finished``) and every later result."""
        dropped = list(self._pending.values())
        self._pending.clear()
        for job in dropped:
            if job.on_finished is not None:
                self._handle(job.on_finished, job.description)
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
        job = self._pending.pop(kind)
        on_result, description, on_finished, run = job.on_result, job.description, job.on_finished, job.run
        self._close_bar.stop()
        if run is None:
            worker = create_worker(_outcome_of(job.job), _ignore_errors=True)
            # shown from the event loop: napari's bar processes events, which must not happen inside
            # a mouse callback (its drag generator would be re-entered)
            worker.started.connect(lambda: self._show(worker, description))
        else:
            self._on_idle()  # the run has a bar of its own: one bar, not two
            worker = create_worker(
                _steps_of, run, job.job, _worker_class=_RunWorker, _ignore_errors=True,
                _progress={"total": job.total, "desc": description},
            )  # fmt: skip
            worker.yielded.connect(lambda step: run.advanced.emit(*step))
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

    def _show(self, worker, description: str) -> None:
        if self._shut_down or worker is not self._worker:
            return
        if self._bar is not None:
            self._bar.set_description(description)
            return
        bar = progress(total=0, desc=description)
        # napari processed events there: jobs may have ended and started meanwhile (a run, with its
        # own bar), and one of them may have made the shared bar already
        if self._bar is None and worker is self._worker and not self._shut_down:
            self._bar = bar
        else:
            bar.close()

    def _on_idle(self) -> None:  # the timer only runs while no worker does (_start_next stops it)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _closing(bar: JobBar, on_finished: Callable[[], None] | None) -> Callable[[], None]:
    """``on_finished``, closing the job's bar first."""

    def finished() -> None:
        bar._close()
        if on_finished is not None:
            on_finished()

    return finished


def _steps_of(run: Run, job: Callable[[Step, Callable[[], bool]], Any]) -> Generator[tuple[int, int], None, tuple]:
    """The core's step callbacks as a generator's yields (what napari's workers and bars follow):
    ``job`` runs on a thread of its own and its steps queue up here, until it ends. Returns
    (True, its result) or (False, its exception), as ``_outcome_of``."""
    steps: queue.SimpleQueue = queue.SimpleQueue()
    ended = object()
    outcome = []

    def target():
        outcome.append(
            _outcome_of(lambda: job(lambda done, total: steps.put((done, total)), run.stop_requested.is_set))()
        )
        steps.put(ended)

    threading.Thread(target=target, name="rwth-sam run", daemon=True).start()
    while (step := steps.get()) is not ended:
        yield step
    return outcome[0]


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
