"""The 3D session without Qt: the range, objects, corrections, stale runs, identity changes, and
writing a run's result into a labels array (take-back and overwrite rules on a numpy block)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from rwth_sam.core.embeddings.identity import DATA, IMAGE, MODEL, WINDOW, SessionIdentity
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.block_writes import written_voxels
from rwth_sam.core.preprocessing import CONTRAST_LIMITS, PERCENTILES
from rwth_sam.core.tasks.propagation import PropagationResult
from rwth_sam.core.tasks.volume_session import (
    DATA_CHANGED,
    IMAGE_CHANGED,
    MODEL_CHANGED,
    SESSION_CHANGED,
    VolumeSession,
    describe_flags,
    run_summary,
)

SHAPE = (10, 8, 8)  # slices along axis 0
IDENTITY = SessionIdentity(image=1, data=1, model=("sam", None, "cpu", 0), window=(CONTRAST_LIMITS, (-160.0, 240.0)))
LIVER, KIDNEY = 5, 2


def square(top, left, size, shape=SHAPE[1:]):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def segmented(start=6, end=2, objects=((LIVER, "liver"), (KIDNEY, "kidney right"))) -> VolumeSession:
    """A session on slices 2–6 (set end first), its middle slice 4 segmented: a square per object."""
    session = VolumeSession()
    session.bind(IDENTITY)
    session.set_bound("end", 0, start)
    session.set_bound("start", 0, end)
    for value, name in objects:
        session.add_object((0, 0, 3, 3), value, name)
    masks = {obj.object_id: square(0, 4 * i, 3) for i, obj in enumerate(session.objects)}
    logits = {obj.object_id: np.full((256, 256), float(obj.object_id), np.float32) for obj in session.objects}
    assert session.set_middle(session.generation, IDENTITY, session.middle, masks, logits)
    return session


def result_of(masks, cancelled=False, flags=()) -> PropagationResult:
    """A propagation's result: slice -> {object id: mask}, every slice given finished."""
    return PropagationResult(masks=masks, finished=sorted(masks), cancelled=cancelled, flags=list(flags))


def test_the_core_session_imports_no_qt():
    code = (
        "import sys, rwth_sam.core.tasks.volume_session; print(sorted({'napari', 'qtpy', 'PyQt6'} & set(sys.modules)))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


# ----------------------------------------------------------------------------- range
def test_the_range_is_set_in_either_order_and_its_middle_is_between():
    session = VolumeSession()
    assert session.describe_range() == "Range: not set"
    assert not session.set_bound("end", 0, 9)
    assert session.describe_range() == "Range: end = 9"
    with pytest.raises(InputError, match="Set the start and the end slice first."):
        session.require_range()
    assert session.set_bound("start", 0, 2)
    assert (session.start, session.end, session.middle) == (2, 9, 5)
    assert session.describe_range() == "Slices 2–9 (axis 0), middle 5"
    session.set_bound("start", 0, 12)  # a start beyond the end: the range is the same slices either way
    assert (session.start, session.end, session.middle) == (9, 12, 10)
    session.require_in_range(0, 9)
    session.require_in_range(0, 12)
    for axis, index in ((0, 8), (0, 13), (1, 10)):
        with pytest.raises(InputError, match="Go to a slice between the start and the end slice first."):
            session.require_in_range(axis, index)


def test_a_range_of_one_slice():
    session = VolumeSession()
    session.set_bound("start", 1, 4)
    assert session.set_bound("end", 1, 4)
    assert (session.start, session.end, session.middle) == (4, 4, 4)


def test_a_bound_on_another_axis_starts_a_new_session():
    session = segmented()
    restarted, generation = [], session.generation
    session.restarted.connect(restarted.append)
    assert not session.set_bound("start", 2, 3)
    assert restarted == [None] and session.generation == generation + 1
    assert session.axis == 2 and session.bounds == {"start": 3}
    assert not session.objects and not session.conditioning and not session.logits


# ----------------------------------------------------------------------------- objects
def test_objects_get_ids_in_order_and_announce_themselves():
    session = VolumeSession()
    inserted, changes = [], []
    session.objects.events.inserted.connect(lambda index, obj: inserted.append((index, obj.object_id)))
    session.changed.connect(lambda: changes.append(1))
    assert session.describe_objects() == "Objects: none"
    with pytest.raises(InputError, match="Add a box for at least one object first."):
        session.object(None)
    session.add_object((1, 2, 3, 4), LIVER, "liver")
    session.add_object([5, 6, 7, 8], KIDNEY, "kidney right")
    assert inserted == [(0, 1), (1, 2)] and len(changes) == 2
    assert session.object(2).box == (5, 6, 7, 8) and session.object(2).name == "kidney right"
    assert session.taken_values() == [LIVER, KIDNEY]
    assert session.describe_objects() == "Objects: 1 liver, 2 kidney right"


def test_refining_needs_the_middle_slice_segmented():
    session = VolumeSession()
    session.set_bound("start", 0, 2)
    session.set_bound("end", 0, 6)
    session.add_object((0, 0, 3, 3), LIVER, "liver")
    for needs in (session.require_middle_segmented, lambda: session.refinement(1), session.require_conditioning):
        with pytest.raises(InputError, match="Segment the middle slice first."):
            needs()
    with pytest.raises(InputError, match="Segment the middle slice first."):
        session.start_run(labels="layer")


def test_a_refinement_feeds_the_last_logits_and_keeps_its_result():
    session = segmented()
    refinement = session.refinement(2)
    assert refinement.index == 4 and refinement.object.value == KIDNEY and refinement.identity == IDENTITY
    assert (refinement.logits == 2.0).all()
    new_mask, new_logits = square(2, 2, 4), np.zeros((256, 256), np.float32)
    assert session.refined(refinement, new_mask, new_logits)
    assert session.mask_on(4, 2) is new_mask and session.logits[2] is new_logits
    assert session.union_on(4, SHAPE[1:]).sum() == 9 + 16 - 1  # the two objects' masks together
    assert session.union_on(3, SHAPE[1:]).sum() == 0


# ----------------------------------------------------------------------------- corrections
def test_before_the_first_propagation_a_correction_only_sets_the_mask():
    session = segmented()
    assert session.correct(6, 1, square(1, 1, 2)) is None
    assert session.correct(4, 1, square(5, 5, 2)) is None
    assert session.mask_on(6, 1).sum() == 4 and session.mask_on(4, 1)[5, 5]
    assert 1 not in session.logits, "a refinement after a new middle mask starts from the box again"
    assert 2 in session.logits


@pytest.mark.parametrize(
    "index, direction", [(4, "both"), (5, "forward"), (6, "forward"), (3, "backward"), (2, "backward")]
)
def test_after_a_propagation_a_correction_re_propagates_the_way_it_lies(index, direction):
    session = segmented()
    write(session, np.zeros(SHAPE, np.uint8), {4: session.conditioning[4]})
    assert session.correct(index, 2, square(1, 1, 2)) == direction
    assert np.array_equal(session.mask_on(index, 2), square(1, 1, 2))
    assert (2 in session.logits) == (index != 4)


def test_an_empty_correction_is_refused_and_changes_nothing():
    session = segmented()
    before = {index: dict(masks) for index, masks in session.conditioning.items()}
    with pytest.raises(InputError, match="The preview is empty on this slice: click the object or paint it first."):
        session.correct(5, 1, np.zeros(SHAPE[1:], bool))
    assert session.conditioning == before


def test_a_run_takes_a_copy_of_the_conditioning_masks():
    session = segmented()
    run = session.start_run("layer")
    assert session.running is run and (run.axis, run.start, run.end) == (0, 2, 6)
    session.correct(5, 1, square(1, 1, 2))  # made during the run: for the next one
    assert set(run.conditioning) == {4} and set(session.conditioning) == {4, 5}
    session.run_finished(run)
    assert session.running is None


# ----------------------------------------------------------------------------- stale runs
@pytest.mark.parametrize(
    "reason", [None, "The model changed during the propagation: it was stopped and nothing was written."]
)
def test_a_run_of_an_older_session_writes_nothing_and_says_why(reason):
    session = segmented()
    run = session.start_run("layer")
    session.reset(reason)
    labels = np.zeros(SHAPE, np.uint8)
    with pytest.raises(InputError) as refused:
        session.apply(run, result_of({4: run.conditioning[4]}), labels, True)
    assert str(refused.value) == (reason or SESSION_CHANGED)
    assert not labels.any() and not session.propagated


def test_results_of_jobs_started_before_a_reset_are_dropped():
    session = segmented()
    refinement = session.refinement(1)
    generation = session.generation
    session.reset("The image changed")
    session.set_bound("start", 0, 2)
    session.set_bound("end", 0, 6)
    session.add_object((0, 0, 3, 3), LIVER, "liver")
    assert not session.set_middle(generation, IDENTITY, 4, {1: square(0, 0, 3)}, {})
    assert not session.refined(refinement, square(0, 0, 3), np.zeros((256, 256), np.float32))
    assert not session.conditioning and not session.logits


# ----------------------------------------------------------------------------- identity
OTHER_WINDOW = replace(IDENTITY, window=(CONTRAST_LIMITS, (0.0, 100.0)))


def test_another_window_drops_the_logits_and_keeps_the_rest():
    """The defect: after the intensity window changed, Refine fed the old window's logits."""
    session = segmented()
    before = session.refinement(1)
    conditioning, generation = session.conditioning, session.generation
    session.bind(OTHER_WINDOW)
    assert session.logits == {}
    assert session.conditioning is conditioning and len(session.objects) == 2 and session.generation == generation
    assert session.describe_range() == "Slices 2–6 (axis 0), middle 4"
    assert not session.refined(before, square(0, 0, 3), np.ones((256, 256), np.float32)), (
        "a refinement started under the old window fed its logits: its result is dropped"
    )
    after = session.refinement(1)
    assert after.logits is None and after.identity == OTHER_WINDOW
    assert session.refined(after, square(0, 0, 3), np.ones((256, 256), np.float32))
    assert session.refinement(1).logits is not None, "the new window's logits serve"


def test_a_middle_slice_segmented_under_another_identity_is_dropped():
    session = segmented()
    before = {index: dict(masks) for index, masks in session.conditioning.items()}
    session.bind(OTHER_WINDOW)
    assert not session.set_middle(session.generation, IDENTITY, 4, {1: square(5, 5, 3)}, {1: np.ones((256, 256))})
    assert session.conditioning == before and session.logits == {}


@pytest.mark.parametrize(
    "other, reason",
    [
        (replace(IDENTITY, image=2, data=2), IMAGE_CHANGED),
        (replace(IDENTITY, data=2), DATA_CHANGED),
        (replace(IDENTITY, model=("sam", None, "cpu", 1)), MODEL_CHANGED),
    ],
    ids=["another image", "new data of the same layer", "another model"],
)
def test_another_image_or_model_starts_a_new_session(other, reason):
    """Nothing of the old session is used: not its objects, masks, logits or what its runs wrote."""
    session = segmented()
    run = session.start_run("layer")
    labels = np.zeros(SHAPE, np.uint8)
    session.apply(run, result_of({4: run.conditioning[4]}), labels, False)
    later = session.start_run("layer")
    generation = session.generation
    restarted = []
    session.restarted.connect(restarted.append)
    session.bind(other)
    assert restarted == [reason]
    assert not session.objects and not session.conditioning and not session.logits and not session.bounds
    assert not session.propagated and not session.written.slices and session.identity == other
    with pytest.raises(InputError, match=reason):
        session.check_current(later)
    assert not session.set_middle(generation, IDENTITY, 4, {1: square(0, 0, 3)}, {}), "a result of the old image"
    session.bind(other)
    assert restarted == [reason], "binding the same identity again changes nothing"


def test_the_identity_is_the_layer_its_data_the_model_and_the_window():
    layer, data, model = object(), np.zeros((3, 8, 8)), ("sam", None, "cpu", 0)
    one = SessionIdentity.of(layer, data, model, CONTRAST_LIMITS, (-160, 240))
    assert one == SessionIdentity.of(layer, data, model, CONTRAST_LIMITS, np.array([-160.0, 240.0]))
    assert SessionIdentity.of(object(), data, model, CONTRAST_LIMITS, (-160, 240)).change_from(one) == IMAGE
    assert SessionIdentity.of(layer, data.copy(), model, CONTRAST_LIMITS, (-160, 240)).change_from(one) == DATA
    assert (
        SessionIdentity.of(layer, data, ("sam", None, "cpu", 1), CONTRAST_LIMITS, (-160, 240)).change_from(one) == MODEL
    )
    assert SessionIdentity.of(layer, data, model, CONTRAST_LIMITS, (0, 240)).change_from(one) == WINDOW
    assert SessionIdentity.of(layer, data, model, PERCENTILES, (-160, 240)).change_from(one) == WINDOW
    assert one.change_from(one) is None and one.change_from(None) == IMAGE
    percentiles = SessionIdentity.of(layer, data, model, PERCENTILES, (-160, 240))
    assert SessionIdentity.of(layer, data, model, PERCENTILES, (0, 1)) == percentiles, (
        "a window that does not read the contrast limits does not change with them"
    )


# ----------------------------------------------------------------------------- writing into labels
def write(session, labels, masks, overwrite=False, **result):
    """Run and apply a result as the panel does: written in the worker, the flags taken on the GUI thread."""
    run, result = session.start_run("layer"), result_of(masks, **result)
    applied = session.apply(run, result, labels, overwrite)
    session.applied(run, result)
    return applied


def test_a_result_goes_into_the_range_only_and_keeps_other_labels():
    session = segmented()
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, :2, :2] = 7  # the user's own label, on every slice
    liver = square(0, 0, 4)
    applied = write(session, labels, {index: {1: liver, 2: square(5, 5, 2)} for index in range(2, 7)})
    assert applied.edited == [] and written_voxels(applied.changes) == 5 * (16 - 4 + 4)
    (change,) = applied.changes
    assert change.block == (slice(2, 7), slice(0, 7), slice(0, 7)), "the changed box of the range"
    assert session.propagated
    for index in range(2, 7):
        assert (labels[index][liver] == np.where(square(0, 0, 2)[liver], 7, LIVER)).all(), "the user's label is kept"
        assert (labels[index][square(5, 5, 2)] == KIDNEY).all()
    outside = np.delete(labels, range(2, 7), axis=0)
    assert (outside[:, :2, :2] == 7).all() and (outside != 7).sum() == outside.size - 5 * 4


def test_a_re_propagation_replaces_its_earlier_result_gives_back_what_it_overwrote_and_keeps_user_edits():
    session = segmented()
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:6, :2, :2] = 7
    write(session, labels, {index: {1: square(0, 0, 6)} for index in range(2, 7)}, overwrite=True)
    assert (labels[3:6, :2, :2] == LIVER).all(), "overwrite on: the result covers the user's label"
    labels[5, 7, 7] = LIVER  # the user's brush on slice 5 after the run
    applied = write(session, labels, {index: {1: square(4, 4, 2)} for index in (4, 5, 6)}, overwrite=True)
    assert applied.edited == [5]
    assert (labels[4, :2, :2] == 7).all(), "the overwritten label comes back"
    assert (labels[4] == LIVER).sum() == 4 and (labels[4] == 0).sum() == 64 - 8
    assert (labels[5][square(0, 0, 6)] != 0).all(), "an edited slice keeps the earlier result and the edit"
    assert labels[5, 7, 7] == LIVER
    assert (labels[3] == LIVER).sum() == 36, "a slice the run did not reach keeps its result"
    assert "Slices edited since the last run keep their labels: 5." in run_summary(
        result_of({4: {}, 5: {}, 6: {}}), 12, applied.edited
    )


def test_another_labels_array_takes_nothing_back():
    session = segmented()
    first, second = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    write(session, first, {4: {1: square(0, 0, 4)}})
    second[4][square(0, 0, 4)] = LIVER  # the same voxels, the user's own in another array
    write(session, second, {4: {1: square(6, 6, 2)}})
    assert (second[4][square(0, 0, 4)] == LIVER).all()


# ----------------------------------------------------------------------------- flags
def test_flags_of_re_propagated_slices_are_replaced_and_visited_in_turn():
    session = segmented()
    changes = []
    session.flags_changed.connect(lambda: changes.append(describe_flags(session.flags)))
    labels = np.zeros(SHAPE, np.uint8)
    masks = {index: {1: square(0, 0, 2)} for index in range(2, 7)}
    write(session, labels, masks, flags=[(5, 1, "area x3"), (2, 2, "score 0.1"), (5, 2, "lost")])
    assert changes == ["To check: slices 2, 5"]
    assert session.next_flag(2) == (5, "object 1: area x3; object 2: lost")
    assert session.next_flag(5) == (2, "object 2: score 0.1"), "after the last flagged slice: back to the first"
    assert session.next_flag(0) == (2, "object 2: score 0.1")
    write(session, labels, {5: masks[5], 6: masks[6]}, flags=[(6, 1, "area x2")])
    assert session.flags == [(2, 2, "score 0.1"), (6, 1, "area x2")]
    session.reset()
    assert session.next_flag(3) is None and changes[-1] == ""


def test_the_flag_list_stays_short():
    """Many flags: slices once each, the first six and a count (the reasons come with the button)."""
    flags = [(index, obj, "a long reason " * 5) for index in range(20, 10, -1) for obj in (1, 2)]
    assert describe_flags(flags) == "To check: slices 11, 12, 13, 14, 15, 16 and 4 more"
    assert describe_flags([(9, 1, "area")]) == "To check: slice 9"
    assert describe_flags([]) == ""


def test_the_run_summary_says_what_was_written_and_kept():
    done = result_of({index: {} for index in range(2, 10)})
    assert run_summary(done, 120, []) == "Propagation done: 8 slices (120 voxels)."
    cancelled = result_of({3: {}}, cancelled=True)
    kept = run_summary(cancelled, 4, list(range(1, 9)))
    assert (
        kept
        == "Propagation cancelled, kept 1 slices (4 voxels). Slices edited since the last run keep their labels: 1, 2, 3, 4, 5, 6 and 2 more."
    )
