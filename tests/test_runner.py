"""The worker runner: model work off the GUI thread, newest request wins, predictions first."""

from __future__ import annotations

import threading

import pytest

from rwth_sam.core.errors import InputError
from rwth_sam.ui.runner import EMBED_AHEAD, PREDICT, LatestJobRunner

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
