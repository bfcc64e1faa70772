"""The prompt session's rules, without Qt or napari: slices, points, the box, selection, staleness, identity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.embeddings.identity import SessionIdentity
from rwth_sam.core.preprocessing import CONTRAST_LIMITS
from rwth_sam.core.tasks.prompt_session import PromptSession

VOLUME = (4, 40, 60)
SLICE_1, SLICE_2 = SlicePlane.of(VOLUME, 0, 1), SlicePlane.of(VOLUME, 0, 2)


class Layer:
    """A stand-in image layer: its identity is what counts."""


IMAGE, OTHER_IMAGE = (Layer(), np.zeros(VOLUME)), (Layer(), np.zeros(VOLUME))


class FakePrediction:
    def __init__(self, name):
        self.name = name
        self.best_logits = np.full((256, 256), float(len(name)))


class RecordingSegmenter:
    def __init__(self):
        self.calls = []

    def predict(self, plane, **prompts):
        self.calls.append((plane, prompts))
        return FakePrediction("mask")


def identity(image=IMAGE, model=("sam", None, "cpu", 0), window=(CONTRAST_LIMITS, (0, 255))):
    return SessionIdentity.of(*image, model, *window)


@pytest.fixture
def session():
    session = PromptSession()
    session.bind(identity())
    events = []
    for name in ("changed", "selection_changed", "predicted", "cleared"):
        getattr(session, name).connect(lambda *args, name=name: events.append(name))
    session.events = events
    return session


def test_the_session_imports_neither_qt_nor_napari():
    code = "import sys, rwth_sam.core.tasks.prompt_session; print(sorted({'napari', 'qtpy', 'PyQt6', 'PySide6'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_points_positive_and_negative_and_a_request_of_them(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    session.add_point(SLICE_1, 30.5, 5, positive=False)
    assert session.points == [(10, 20), (30.5, 5)] and session.labels == [1, 0]
    assert session.events == ["cleared", "changed", "changed"], "the first point starts the slice afresh"
    request = session.request()
    assert (request.plane, request.points, request.labels, request.box) == (
        SLICE_1,
        ((10, 20), (30.5, 5)),
        (1, 0),
        None,
    )
    assert request.mask_logits is None
    segmenter = RecordingSegmenter()
    request.predict(segmenter)
    assert segmenter.calls == [(SLICE_1, dict(points=[(10, 20), (30.5, 5)], labels=[1, 0], box=None, mask_logits=None))]


def test_a_new_slice_starts_afresh(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    session.set_box(SLICE_1, 1, 1, 9, 9)
    session.accept(session.request(), FakePrediction("first"))
    session.add_point(SLICE_2, 3, 4, positive=False)
    assert session.plane == SLICE_2
    assert session.points == [(3, 4)] and session.labels == [0] and session.box is None
    assert session.prediction is None and session.request().mask_logits is None


def test_the_next_request_refines_the_accepted_prediction(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    first = FakePrediction("first")
    assert session.accept(session.request(), first)
    assert session.prediction is first and session.events[-1] == "predicted"
    session.add_point(SLICE_1, 12, 22, positive=False)
    assert session.request().mask_logits is first.best_logits


def test_a_box_replaces_the_box_ordered_and_clipped_and_a_tiny_one_is_no_box(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    assert session.set_box(SLICE_1, 50, 30, 5, 2)
    assert session.box == (5, 2, 50, 30)
    assert session.set_box(SLICE_1, -10, -3, 100, 80)
    assert session.box == (0, 0, 59, 39), "clipped to the 60x40 slice"
    assert session.points == [(10, 20)], "the points stay with the box"
    version = session.version
    assert not session.set_box(SLICE_1, 10, 10, 10.5, 30)
    assert session.box == (0, 0, 59, 39) and session.version == version


def test_selection_toggles_near_points_only_and_deletion_predicts_afresh(session):
    for x, y, positive in ((10, 10, True), (30, 20, False), (50, 30, True)):
        session.add_point(SLICE_1, x, y, positive)
    session.set_box(SLICE_1, 1, 1, 40, 30)
    session.accept(session.request(), FakePrediction("three points"))
    version = session.version
    session.toggle_point_near(SLICE_1, 30.4, 20.3, radius=2)
    assert session.selected == {1} and session.events[-1] == "selection_changed"
    session.toggle_point_near(SLICE_1, 45, 30, radius=2)  # nowhere near a point
    session.toggle_point_near(SLICE_2, 10, 10, radius=2)  # another slice
    assert session.selected == {1}
    session.toggle_point_near(SLICE_1, 30, 20, radius=2)
    assert session.selected == set(), "a second click deselects"
    assert session.version == version, "selecting is no prompt change"
    session.toggle_point_near(SLICE_1, 30, 20, radius=2)
    session.toggle_point_near(SLICE_1, 10, 11, radius=2)
    session.delete_selected()
    assert session.points == [(50, 30)] and session.labels == [1] and session.selected == set()
    assert session.box == (1, 1, 40, 30) and session.prediction is None
    assert session.request().mask_logits is None, "the last mask came from the deleted points too"
    events = len(session.events)
    session.delete_selected()  # nothing selected: nothing happens
    assert len(session.events) == events


def test_stale_predictions_are_dropped(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    old = session.request()
    session.add_point(SLICE_1, 15, 20, positive=True)
    assert not session.accept(old, FakePrediction("old"))
    assert session.prediction is None and "predicted" not in session.events
    newer = session.request()
    session.clear()
    assert not session.accept(newer, FakePrediction("cleared meanwhile"))
    assert session.prediction is None


def test_clear_keeps_the_slice_and_drops_everything_else(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    session.accept(session.request(), FakePrediction("p"))
    session.clear()
    assert session.empty and session.prediction is None and session.plane == SLICE_1
    assert session.request() is None and session.events[-1] == "cleared"


def test_deleting_the_last_point_leaves_an_empty_session(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    session.accept(session.request(), FakePrediction("p"))
    session.toggle_point_near(SLICE_1, 10, 20, radius=1)
    session.delete_selected()
    assert session.empty and session.prediction is None and session.request() is None
    assert session.events[-1] == "changed", "the view clears the preview of an empty session"


@pytest.mark.parametrize(
    "change",
    [
        dict(image=OTHER_IMAGE), dict(image=(IMAGE[0], np.zeros(VOLUME))), dict(model=("sam", None, "cuda", 0)),
        dict(model=("sam", None, "cpu", 1)),
    ],
    ids=["another image", "new data of the same layer", "another model", "the model loaded afresh"],
)  # fmt: skip
def test_another_image_or_model_starts_afresh(session, change):
    session.add_point(SLICE_1, 10, 20, positive=True)
    request = session.request()
    session.bind(identity(**change))
    assert session.empty and session.plane is None and session.events[-1] == "cleared"
    assert not session.accept(request, FakePrediction("of the old image")), "a result of the old image was kept"


def test_another_window_keeps_the_prompts_and_segments_them_again(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    session.accept(session.request(), FakePrediction("p"))
    in_flight = session.request()
    session.bind(identity(window=(CONTRAST_LIMITS, (10, 200))))
    assert session.points == [(10, 20)] and session.plane == SLICE_1
    assert session.prediction is None and session.events[-1] == "changed"
    assert session.request().mask_logits is None, "logits of another window must not refine this one"
    assert not session.accept(in_flight, FakePrediction("old window"))


def test_binding_the_same_identity_again_changes_nothing(session):
    session.add_point(SLICE_1, 10, 20, positive=True)
    version, events = session.version, len(session.events)
    session.bind(identity())
    assert session.version == version and len(session.events) == events and session.points == [(10, 20)]


def test_another_window_with_no_prompts_asks_for_nothing(session):
    session.bind(identity(window=("soft tissue", None)))
    assert session.events == [] and session.request() is None
