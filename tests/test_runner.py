"""The worker runner: model work off the GUI thread, newest request wins, predictions first."""

from __future__ import annotations

import threading

import pytest

from rwth_sam.core.errors import InputError
from rwth_sam.ui.runner import AUTOMATIC, EMBED_AHEAD, PREDICT, JobBar, LatestJobRunner

from napari_helpers import open_progress_bars

pytestmark = pytest.mark.gui


def test_jobs_run_off_the_gui_thread_and_waiting_ones_coalesce(qtbot):
    errors, results, threads = [], [], []
    gate = threading.Event()
    runner = LatestJobRunner(on_error=errors.append)

    def job(name, wait=False):
        def run():
            threads.append(threading.current_thread())
            if wait:
                gate.wait(10)
            return name

        return run

    runner.submit(PREDICT, job("first", wait=True), results.append, "test")
    runner.submit(PREDICT, job("second"), results.append, "test")  # superseded while waiting
    runner.submit(EMBED_AHEAD, job("embed"), results.append, "test")
    runner.submit(PREDICT, job("third"), results.append, "test")
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert results == ["first", "third", "embed"]
    assert errors == []
    assert threading.main_thread() not in threads


def test_errors_reach_the_handler_and_the_next_job_still_runs(qtbot):
    errors, results = [], []
    runner = LatestJobRunner(on_error=errors.append)

    def failing():
        raise InputError("bad slice")

    def unexpected():
        raise ValueError("a bug")

    runner.submit(PREDICT, failing, results.append, "Segmenting")
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    runner.submit(PREDICT, unexpected, results.append, "Segmenting")
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    runner.submit(PREDICT, lambda: "ok", results.append, "Segmenting")
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert [str(e) for e in errors] == ["bad slice", "Segmenting failed (ValueError: a bug). Nothing was changed."]
    assert results == ["ok"]


def test_a_failing_result_handler_becomes_a_message_not_a_traceback(qtbot):
    """What a result handler raises on the GUI thread would reach napari's traceback dialog."""
    errors, finished = [], []

    def handler(_):
        raise KeyError("layer")

    runner = LatestJobRunner(on_error=errors.append)
    runner.submit(PREDICT, lambda: 1, handler, "Showing the preview", on_finished=lambda: finished.append(1))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert [str(e) for e in errors] == ["Showing the preview failed (KeyError: 'layer'). Nothing was changed."]
    assert finished == [1]


def test_a_dropped_job_is_finished_and_a_shut_down_runner_hands_nothing_back(qtbot):
    finished, results = [], []
    runner = LatestJobRunner(on_error=pytest.fail)
    gate = threading.Event()
    runner.submit(PREDICT, gate.wait, results.append, "first")
    runner.submit(PREDICT, lambda: "second", results.append, "second", on_finished=lambda: finished.append("second"))
    runner.submit(PREDICT, lambda: "third", results.append, "third", on_finished=lambda: finished.append("third"))
    assert finished == ["second"], "a job dropped unrun must still be finished (its progress bar closed)"
    runner.shut_down()
    assert finished == ["second", "third"]
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert results == [], "results after the widget was closed must be dropped"


def test_one_progress_bar_per_burst_of_work_closed_when_idle(qtbot):
    """Making a napari progress bar costs the GUI thread 50 ms: jobs in a row share one."""
    bars = []
    runner = LatestJobRunner(on_error=pytest.fail)
    for name in ("click", "click again", "embed ahead"):
        runner.submit(PREDICT, lambda: name, lambda _: bars.append(runner._bar), name)
        qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert len(bars) == 3 and bars[0] is not None and all(bar is bars[0] for bar in bars)
    assert bars[0].desc.startswith("embed ahead")
    qtbot.waitUntil(lambda: runner._bar is None, timeout=5_000)
    runner.submit(PREDICT, lambda: None, lambda _: bars.append(runner._bar), "later")
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert bars[-1] is not None and bars[-1] is not bars[0], "a later burst gets a bar of its own"


def test_a_run_has_a_bar_of_its_own_driven_by_its_steps_and_quit_keeps_what_it_finished(qtbot):
    """A long run is a napari generator worker: its steps move its own bar; ``quit()`` (Cancel)
    stops it at its next step and its result (the work finished so far) still comes back."""
    results, steps, threads = [], [], []
    gate = threading.Event()
    runner = LatestJobRunner(on_error=pytest.fail)

    def job(step, should_stop):
        threads.append(threading.current_thread())
        finished = 0
        while finished < 100 and not should_stop():
            finished += 1
            step(finished, 100)
            if finished == 3:
                gate.wait(10)
        return finished

    open_before = len(open_progress_bars())
    run = runner.submit_run(AUTOMATIC, job, results.append, "a long run", total=100)
    run.advanced.connect(lambda done, total: steps.append((done, total)))
    qtbot.waitUntil(lambda: len(steps) == 3, timeout=10_000)
    bars = [bar for bar in open_progress_bars() if bar.desc.startswith("a long run")]
    assert len(bars) == 1 and bars[0].total == 100 and bars[0].n == 3
    assert len(open_progress_bars()) == open_before + 1 and runner._bar is None, "one bar for the run"
    run.quit()
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert results == [3] and steps == [(1, 100), (2, 100), (3, 100)]
    assert threading.main_thread() not in threads
    qtbot.waitUntil(lambda: len(open_progress_bars()) == open_before, timeout=5_000)


def test_a_run_that_raises_is_one_message_and_closes_its_bar(qtbot):
    errors, finished = [], []
    runner = LatestJobRunner(on_error=errors.append)
    open_before = len(open_progress_bars())

    def job(step, should_stop):
        step(1, 2)
        raise ValueError("a bug")

    runner.submit_run(AUTOMATIC, job, pytest.fail, "Segmenting everything", 2, on_finished=lambda: finished.append(1))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert [str(e) for e in errors] == ["Segmenting everything failed (ValueError: a bug). Nothing was changed."]
    assert finished == [1]
    qtbot.waitUntil(lambda: len(open_progress_bars()) == open_before, timeout=5_000)


def test_a_jobs_own_bar_is_open_while_it_waits_and_runs_and_closed_however_it_ends(qtbot):
    """A job that may download owns its bar from its submission on; dropped unrun, it closes it
    (the newer job has a bar of its own); a job without one shows none."""
    runner = LatestJobRunner(on_error=pytest.fail)
    gate, filled = threading.Event(), []
    first, dropped, newest = JobBar("Downloading first"), JobBar("Downloading dropped"), JobBar("Downloading newest")
    open_before = open_progress_bars()

    def downloads():
        return sorted(bar.desc for bar in open_progress_bars() - open_before if bar.desc.startswith("Downloading"))

    def job(bar, wait=False):
        def run():
            if wait:
                gate.wait(10)
            return bar.bar()  # what a download would fill, from the worker

        return run

    runner.submit(PREDICT, job(first, wait=True), filled.append, "a click", bar=first)
    runner.submit(PREDICT, job(dropped), filled.append, "another click", bar=dropped)
    qtbot.waitUntil(lambda: len(downloads()) == 2, timeout=5_000)
    runner.submit(PREDICT, job(newest), filled.append, "a third click", bar=newest)
    runner.submit(EMBED_AHEAD, lambda: None, filled.append, "embedding")  # no bar of its own
    qtbot.waitUntil(lambda: downloads() == ["Downloading first", "Downloading newest"], timeout=5_000)
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert [getattr(bar, "desc", bar) for bar in filled] == ["Downloading first", "Downloading newest", None]
    assert downloads() == [], "every job's bar closes when the job ends"
