"""Automatic mode in the widget: settings reach the generator, results are undoable, cancel keeps work."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.tasks import automatic
from rwth_sam.ui import automatic_panel
from rwth_sam.ui.widget import AUTOMATIC_MODE

from conftest import PERMISSIVE
from napari_helpers import dock, last_undo_step, left_click, middle_click, open_progress_bars, wait_idle

pytestmark = pytest.mark.gui


def automatic_widget(viewer, checkpoint, image, **settings):
    widget = dock(viewer, checkpoint)
    widget.mode.value = AUTOMATIC_MODE
    assert not widget.automatic.native.isHidden() and widget.submit_button.native.isHidden()
    for name, value in {**PERMISSIVE, **settings}.items():
        widget.automatic.setting_controls[name].value = value
    return widget


def test_every_setting_reaches_the_generator(viewer, checkpoint, qtbot, monkeypatch, rng):
    viewer.add_image(rng.integers(0, 255, (40, 40)).astype(np.uint8))
    chosen = dict(
        PERMISSIVE, stability_score_offset=0.5, box_nms_thresh=0.6, crop_n_layers=1, crop_nms_thresh=0.5,
        crop_overlap_ratio=0.25, crop_n_points_downscale_factor=2, min_mask_region_area=7,
    )  # fmt: skip
    widget = automatic_widget(viewer, checkpoint, None, **chosen)
    seen = []
    generate = automatic.generate_slice

    def spy(predictor, rgb, settings, **progress_and_stop):
        seen.append(settings)
        return generate(predictor, rgb, settings, **progress_and_stop)

    monkeypatch.setattr("rwth_sam.ui.automatic_panel.generate_slice", spy)
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget)
    assert seen == [automatic.AutomaticSettings(**chosen)]
    assert widget.automatic.result_layer is not None


def test_slice_result_is_undoable_and_objects_go_to_classes(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (48, 48)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    labels = widget.create_labels_layer()
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget)
    result = widget.automatic.result_layer
    objects = result.data.copy()
    assert objects.max() >= 1, widget.status.value
    result.undo()
    assert not result.data.any()
    result.redo()
    assert np.array_equal(result.data, objects)

    # click an object, pick a class, assign: it lands in the labels layer, undoably
    row, col = np.argwhere(objects == objects.max())[0]
    left_click(viewer, image.data_to_world((row, col)))
    assert widget.automatic.selected_object == objects.max()
    profile = PROFILES.get("Li-ion cylindrical cell")
    widget.profile.value = profile.name
    widget.classes.value = profile.class_by_name("cathode")
    widget.automatic.assign_selected()
    wait_idle(qtbot, widget)
    assert np.array_equal(labels.data == profile.class_by_name("cathode").value, objects == objects.max())
    assert "cathode" in widget.status.value
    labels.undo()
    assert not labels.data.any()


def test_volume_run_links_slices_and_cancel_keeps_finished_slices(viewer, checkpoint, qtbot, monkeypatch, rng):
    volume = rng.integers(0, 255, (5, 40, 40)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = automatic_widget(viewer, checkpoint, image)
    panel = widget.automatic
    segment_one = automatic._labels
    started = []
    third_slice_started = threading.Event()

    def slice_waiting_for_cancel(*args):
        started.append(1)
        if len(started) == 3:  # the user's Cancel arrives while the third slice is being segmented
            third_slice_started.set()
            assert panel.current_run.stop_requested.wait(30)
        return segment_one(*args)

    monkeypatch.setattr(automatic, "_labels", slice_waiting_for_cancel)
    panel.run_volume.clicked.emit()
    assert panel.cancel.enabled
    qtbot.waitUntil(third_slice_started.is_set, timeout=120_000)
    bar = panel.run.progress
    qtbot.waitUntil(lambda: bar.value == 2, timeout=10_000)  # beside Cancel, not only in napari's activity dock
    assert bar.max == 5 and not bar.native.isHidden()
    panel.cancel.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    assert bar.native.isHidden()
    result = panel.result_layer.data
    assert result[0].any() and result[1].any(), "finished slices were lost"
    assert not result[2:].any(), "the slice in progress at the cancel, or one after it, was written"
    assert len(started) == 3
    assert "cancelled, kept 2 slices" in widget.status.value and not panel.cancel.enabled
    widget.say("Preview: 10 pixels")  # the next click's status
    assert "cancelled, kept 2 slices" in widget.messages.kept[0], "what the run wrote is kept until dismissed"
    panel.result_layer.undo()
    assert not panel.result_layer.data.any()


def test_one_submit_in_3d_stores_only_the_changed_voxels(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 255, (16, 64, 64)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    viewer.dims.set_point(0, 5)
    middle_click(viewer, image.data_to_world((5, 30, 30)))
    wait_idle(qtbot, widget)
    changed = int(widget.prompts.prediction.mask.sum())
    widget.submit()
    (atom,) = last_undo_step(labels)
    where, before, after = atom
    assert all(isinstance(axis, slice) for axis in where) and where[0] == slice(5, 6), "the one slice's box"
    assert (np.asarray(after) != np.asarray(before)).sum() == changed
    stored = before.nbytes + after.nbytes
    assert stored < changed / 4, "the history holds more than a compressed box"
    labels.undo()
    assert not labels.data.any()


# ----------------------------------------------------------------------------------------------
# Long runs: progress, Cancel, bounded settings, the cost shown before a run
# ----------------------------------------------------------------------------------------------

MANY_BATCHES = dict(points_per_side=64, points_per_batch=16)  # 256 decoder batches on one slice


def user_labels(widget):
    """The user's labels layer, with labels of their own in it (which nothing here may change)."""
    labels = widget.create_labels_layer()
    labels.data[(slice(0, 2),) * labels.data.ndim] = 7
    labels.refresh()
    return labels


def _cancel_slice_run(viewer, checkpoint, qtbot, rng, cancel):
    image = viewer.add_image(rng.integers(0, 255, (64, 64)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image, **MANY_BATCHES)
    panel = widget.automatic
    labels = user_labels(widget)
    before = labels.data.copy()
    total = panel.settings().workload().batches
    seen = []
    panel.run_slice.clicked.emit()
    panel.current_run.advanced.connect(lambda done, of: seen.append((done, of)))  # before its first step arrives
    assert panel.cancel.enabled, "the slice run has no Cancel"
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=120_000)
    cancel(panel)
    wait_idle(qtbot, widget, timeout=120_000)
    assert seen[0] == (1, total) == (1, 256), "progress is reported per decoder batch"
    assert seen[-1][0] < total / 2, "the run went on after the cancel"
    assert panel.result_layer is None, "a cancelled slice run wrote a result"
    assert "cancelled, nothing was written" in widget.status.value
    assert not panel.cancel.enabled and not panel.running
    np.testing.assert_array_equal(labels.data, before)
    return widget


def test_slice_run_has_progress_and_cancel_stops_it_between_batches(viewer, checkpoint, qtbot, rng):
    _cancel_slice_run(viewer, checkpoint, qtbot, rng, lambda panel: panel.cancel.clicked.emit())


def test_cancel_runs_stops_a_slice_run_for_the_closing_widget(viewer, checkpoint, qtbot, rng):
    widget = _cancel_slice_run(viewer, checkpoint, qtbot, rng, lambda panel: panel.cancel_runs())
    widget.automatic.setting_controls["points_per_side"].value = 4
    widget.automatic.segment_slice()  # a later run is not cancelled by the earlier request
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget.automatic.result_layer is not None and widget.automatic.result_layer.data.any()


def test_settings_are_bounded_and_the_cost_is_shown_before_a_run(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (40, 40)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    panel = widget.automatic
    controls = panel.setting_controls
    for name, high in automatic.HIGHEST.items():
        assert controls[name].max == high and controls[name].min == automatic.LOWEST[name]
    assert controls["points_per_side"].min == 1 and controls["points_per_batch"].min == 1
    with pytest.raises(ValueError):
        controls["points_per_side"].value = 1000
    assert controls["points_per_side"].value == 4
    assert panel.workload.value == "Per slice: 16 prompt points in 1 decoder batches, the whole slice"
    controls["points_per_side"].value = 128
    controls["points_per_batch"].value = 64
    assert panel.workload.value == "Per slice: 16,384 prompt points in 256 decoder batches, the whole slice"
    controls["crop_n_layers"].value = 1
    assert panel.workload.value.startswith("Per slice: 81,920 prompt points in 1,280 decoder batches, 5 crops (large:")
    controls["points_per_side"].value = 256
    controls["crop_n_layers"].value = 3
    assert panel.workload.value.startswith("Not runnable: 5,570,560 prompt points per slice")
    panel.run_slice.clicked.emit()
    assert not widget.runner.busy and "limit of 524,288" in widget.status.value


def test_result_layer_is_never_a_target_for_results(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (48, 48)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    labels = user_labels(widget)
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget)
    result = widget.automatic.result_layer
    assert result.metadata["rwth_sam_helper"] == "automatic result"
    widget.labels_picker.reset_choices()
    assert [layer.name for layer in widget.labels_picker.choices] == [labels.name]


class HeldRun:
    """Holds the worker at the model call until the test has done what happens 'during the run'."""

    def __init__(self, monkeypatch, name):
        self.started = threading.Event()
        self.go = threading.Event()
        original = getattr(automatic_panel, name)

        def held(*args, **kwargs):
            self.started.set()
            assert self.go.wait(120)
            return original(*args, **kwargs)

        monkeypatch.setattr(automatic_panel, name, held)


@pytest.fixture
def hold(monkeypatch):
    runs = []

    def make(name="generate_slice"):
        runs.append(HeldRun(monkeypatch, name))
        return runs[-1]

    yield make
    for run in runs:  # a failed test must not leave a worker waiting
        run.go.set()


def test_result_layer_deleted_during_a_run_gets_a_new_one(viewer, checkpoint, qtbot, rng, hold):
    image = viewer.add_image(rng.integers(0, 255, (48, 48)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    panel = widget.automatic
    labels = user_labels(widget)
    before = labels.data.copy()
    panel.segment_slice()
    wait_idle(qtbot, widget)
    first = panel.result_layer
    held = hold()
    panel.segment_slice()
    qtbot.waitUntil(held.started.is_set, timeout=60_000)
    viewer.layers.remove(first)
    held.go.set()
    wait_idle(qtbot, widget)
    assert "result layer was deleted during the run" in widget.status.value
    result = panel.result_layer
    assert result is not first and result in viewer.layers and result.data.max() >= 1
    assert result.metadata["rwth_sam_helper"] == "automatic result"
    np.testing.assert_array_equal(labels.data, before)


def test_a_second_volume_click_while_one_runs_leaves_one_bar_and_its_cancel(viewer, checkpoint, qtbot, rng, hold):
    """Before: a run showed two bars (the runner's beside the run's own), and its buttons stayed
    enabled while it ran, so a second click could start work that shared its bar and Cancel."""
    image = viewer.add_image(rng.integers(0, 255, (3, 32, 32)).astype(np.uint8), name="Image")
    widget = automatic_widget(viewer, checkpoint, image)
    panel = widget.automatic
    open_before = len(open_progress_bars())
    held = hold("generate_volume")
    panel.run_volume.clicked.emit()
    qtbot.waitUntil(held.started.is_set, timeout=60_000)
    qtbot.wait(100)  # the worker's started signal reaches the GUI thread (the bars show then)
    assert not panel.run_volume.enabled and not panel.run_slice.enabled, "a run's buttons stay enabled"
    panel.run_volume.clicked.emit()
    assert "An automatic run is in progress" in widget.status.value
    assert len(open_progress_bars()) == open_before + 1, "one run, one progress bar"
    assert panel.cancel.enabled, "the second click disabled the running run's Cancel"
    held.go.set()
    wait_idle(qtbot, widget)
    assert "Automatic done: 3 slices" in widget.status.value
    assert panel.run_volume.enabled and panel.run_slice.enabled and not panel.cancel.enabled
    qtbot.waitUntil(lambda: len(open_progress_bars()) == open_before, timeout=5_000)


# ----------------------------------------------------------------------------------------------
# The bad-input and fault catalogue: each case ends in a message (or the correct result), never a
# traceback, and the user's labels layers are as they were.
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    act: object  # act(ctx): what the user (or the world) does
    message: str  # a regular expression the status line must match


def _run_and_select(ctx):
    """A finished slice run and its largest object selected, as by a left click."""
    ctx.panel.segment_slice()
    wait_idle(ctx.qtbot, ctx.widget)
    objects = ctx.panel.result_layer.data
    assert objects.max() >= 1
    row, col = np.argwhere(objects == objects.max())[0][-2:]
    ctx.panel.select_object_at(ctx.image.data_to_world((row, col)))
    assert ctx.panel.selected_object == objects.max()


def _during_slice_run(what, name="generate_slice"):
    def act(ctx):
        held = ctx.hold(name)
        (ctx.panel.segment_slice if name == "generate_slice" else ctx.panel.segment_volume)()
        ctx.qtbot.waitUntil(held.started.is_set, timeout=60_000)
        what(ctx)
        held.go.set()

    return act


def _second_run_while_one_runs(ctx):
    held = ctx.hold()
    ctx.panel.segment_slice()
    ctx.qtbot.waitUntil(held.started.is_set, timeout=60_000)
    ctx.panel.run_slice.clicked.emit()
    message = ctx.widget.status.value
    held.go.set()
    ctx.wait()
    ctx.widget.status.value = message  # what the refused click said (the run's own result came after)


def _nan_typed_into_a_threshold(ctx):
    control = ctx.panel.setting_controls["pred_iou_thresh"]
    control.value = float("nan")
    assert 0.0 <= control.value <= 1.0  # Qt keeps a number in the range
    ctx.panel.segment_slice()


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def _other_labels_picked(ctx, layer):
    ctx.user_layers.append((layer, layer.data.copy()))
    ctx.widget.labels_picker.reset_choices()
    ctx.widget.labels_picker.value = layer


def _assign_into_wrong_shape(ctx):
    _run_and_select(ctx)
    _other_labels_picked(ctx, ctx.viewer.add_labels(np.zeros((20, 30), np.uint32), name="other"))
    ctx.panel.assign.clicked.emit()


def _assign_without_labels(ctx):
    _run_and_select(ctx)
    ctx.viewer.layers.remove(ctx.labels)
    ctx.panel.assign.clicked.emit()


def _assign_after_result_deleted(ctx):
    _run_and_select(ctx)
    ctx.viewer.layers.remove(ctx.panel.result_layer)
    ctx.panel.assign.clicked.emit()


def _assign_after_object_undone(ctx):
    _run_and_select(ctx)
    ctx.panel.result_layer.undo()
    ctx.panel.assign.clicked.emit()


CASES = [
    Case("volume button on a 2D image", (40, 40), lambda ctx: ctx.panel.run_volume.clicked.emit(), "The image is 2D"),
    Case("no image left", (40, 40), lambda ctx: (ctx.viewer.layers.remove(ctx.image), ctx.panel.segment_slice()),
         "Pick an image layer first"),
    Case("prompt points over the limit", (40, 40),
         lambda ctx: (ctx.set(points_per_side=200, crop_n_layers=2), ctx.panel.run_slice.clicked.emit()),
         r"840,000 prompt points per slice .* limit of 524,288"),
    Case("downscale factor leaves no points", (40, 40),
         lambda ctx: (ctx.set(crop_n_layers=2, crop_n_points_downscale_factor=3), ctx.panel.segment_volume()),
         "leaves no points in crop layer 2"),
    Case("NaN typed into a threshold", (40, 40), _nan_typed_into_a_threshold, r"Automatic: \d+ objects on this slice"),
    Case("a second run while one runs", (40, 40), _second_run_while_one_runs, "An automatic run is in progress"),
    Case("unexpected error in the button", (40, 40),
         lambda ctx: (ctx.monkeypatch.setattr(type(ctx.widget), "plane_under", _raise(ZeroDivisionError("boom"))),
                      ctx.panel.run_slice.clicked.emit()),
         r"Segment everything on this slice failed \(ZeroDivisionError: boom\)"),
    Case("the model fails in the worker", (40, 40),
         lambda ctx: (ctx.monkeypatch.setattr(automatic_panel, "generate_slice", _raise(RuntimeError("CUDA OOM"))),
                      ctx.panel.segment_slice()),
         "RuntimeError: CUDA OOM"),
    Case("assign with nothing selected", (40, 40), lambda ctx: ctx.panel.assign.clicked.emit(),
         r"Select an object of the automatic result first"),
    Case("assign into a labels layer of the wrong shape", (40, 40), _assign_into_wrong_shape,
         r"'other' has shape \(20, 30\) but the image has \(40, 40\)"),
    Case("assign with the labels layer removed", (40, 40), _assign_without_labels, "Pick a labels layer"),
    Case("assign after the result layer was deleted", (40, 40), _assign_after_result_deleted,
         "The automatic result layer was deleted"),
    Case("assign after the object was undone", (40, 40), _assign_after_object_undone,
         r"Object \d+ is no longer in the automatic result"),
    Case("image removed during a slice run", (40, 40),
         _during_slice_run(lambda ctx: ctx.viewer.layers.remove(ctx.image)),
         "The image 'Image' was removed during the automatic run: nothing was written"),
    Case("image data replaced (another shape) during a slice run", (40, 40),
         _during_slice_run(lambda ctx: setattr(ctx.image, "data", np.zeros((30, 50), np.uint8))),
         "The image 'Image' got new data during the automatic run: nothing was written"),
    Case("image removed during a volume run", (3, 32, 32),
         _during_slice_run(lambda ctx: ctx.viewer.layers.remove(ctx.image), "generate_volume"),
         "The image 'Image' was removed during the automatic run: nothing was written"),
    Case("image data replaced (same shape) during a volume run", (3, 32, 32),
         _during_slice_run(lambda ctx: setattr(ctx.image, "data", np.zeros((3, 32, 32), np.uint8)), "generate_volume"),
         "The image 'Image' got new data during the automatic run"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_and_faults_are_told_and_change_no_labels(case, viewer, checkpoint, qtbot, monkeypatch, rng, hold):
    image = viewer.add_image(rng.integers(0, 255, case.shape).astype(np.uint8), name="Image")
    widget = automatic_widget(viewer, checkpoint, image)
    panel = widget.automatic
    labels = user_labels(widget)
    ctx = SimpleNamespace(
        viewer=viewer, widget=widget, panel=panel, image=image, labels=labels, qtbot=qtbot,
        user_layers=[(labels, labels.data.copy())],
        monkeypatch=monkeypatch, hold=hold, wait=lambda: wait_idle(qtbot, widget),
        set=lambda **values: [setattr(panel.setting_controls[k], "value", v) for k, v in values.items()],
    )  # fmt: skip
    case.act(ctx)
    wait_idle(qtbot, widget)
    assert re.search(case.message, widget.status.value), widget.status.value
    assert "Traceback" not in widget.status.value and len(widget.status.value) < 400
    for layer, data in ctx.user_layers:
        assert layer.data.dtype == data.dtype
        np.testing.assert_array_equal(layer.data, data)
    result = panel.result_layer
    assert result is None or result.data.shape == image.data.shape or result not in viewer.layers
    assert not panel.running and not panel.cancel.enabled


# Assigning an object goes through the main widget's commit checks.
def test_assign_with_a_label_value_beyond_the_labels_dtype_says_so(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (40, 40)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    labels = viewer.add_labels(np.zeros((40, 40), np.uint8), name="uint8 labels")
    labels.data[:2, :2] = 7
    before = labels.data.copy()
    widget.labels_picker.reset_choices()
    widget.labels_picker.value = labels
    widget.label_value.value = 300
    ctx = SimpleNamespace(panel=widget.automatic, widget=widget, qtbot=qtbot, image=image)
    _run_and_select(ctx)
    widget.automatic.assign.clicked.emit()
    message = widget.status.value
    assert "300" in message and ("uint8" in message or "255" in message), message
    assert "Error" not in message, f"an exception's text, not a message: {message}"
    np.testing.assert_array_equal(labels.data, before)


def test_assign_into_a_read_only_labels_array_says_so(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (40, 40)).astype(np.uint8))
    widget = automatic_widget(viewer, checkpoint, image)
    labels = user_labels(widget)
    before = labels.data.copy()
    ctx = SimpleNamespace(panel=widget.automatic, widget=widget, qtbot=qtbot, image=image)
    _run_and_select(ctx)
    labels.data.flags.writeable = False
    widget.automatic.assign.clicked.emit()
    message = widget.status.value
    assert "read-only" in message and "Error" not in message, message
    np.testing.assert_array_equal(labels.data, before)
