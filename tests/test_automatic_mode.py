"""Automatic mode in the widget: settings reach the generator, results are undoable, cancel keeps work."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rwth_sam.core import automatic
from rwth_sam.ui.profile_store import PROFILES
from rwth_sam.ui.widget import AUTOMATIC_MODE

from napari_helpers import dock, left_click, middle_click, wait_idle

pytestmark = pytest.mark.gui

PERMISSIVE = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)


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
    monkeypatch.setattr(
        "rwth_sam.ui.automatic_panel.generate_slice",
        lambda predictor, rgb, settings: (seen.append(settings), generate(predictor, rgb, settings))[1],
    )
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
            assert panel.progress.cancel_requested.wait(30)
        return segment_one(*args)

    monkeypatch.setattr(automatic, "_labels", slice_waiting_for_cancel)
    panel.run_volume.clicked.emit()
    assert panel.cancel.enabled
    qtbot.waitUntil(third_slice_started.is_set, timeout=120_000)
    panel.cancel.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    result = panel.result_layer.data
    assert result[0].any() and result[1].any(), "finished slices were lost"
    assert not result[2:].any(), "the slice in progress at the cancel, or one after it, was written"
    assert len(started) == 3
    assert "cancelled, kept 2 slices" in widget.status.value and not panel.cancel.enabled
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
    (atom,) = labels._undo_history[-1]
    stored = sum(np.asarray(part).nbytes for part in (*atom[0], atom[1], atom[2]))
    per_voxel = 3 * 1 + 2 * labels.data.dtype.itemsize  # three uint8 indices (axes < 256), old and new value
    assert stored <= changed * per_voxel
    assert stored < labels.data.nbytes / 8, "the history holds more than a slice's worth"
    labels.undo()
    assert not labels.data.any()
