"""3D mode in the widget: range, boxes on the middle slice, propagation, cancel and undo.

The oracle test runs the whole pipeline (buttons in order, propagation, writing into the labels
layer) on the real whole-body CT with a stand-in model that answers a box with the true organ
region under it (``conftest.OraclePredictor``): the pipeline must then reproduce the reference
labels between start and end.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from vispy.util import keys

import rwth_sam
from rwth_sam.core.embeddings.segmenter import Segmenter
from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.phantom import VOID, battery_phantom
from rwth_sam.ui.widget import VOLUME_MODE

from conftest import ORACLE, OraclePredictor, count_embeds, dice
from napari_helpers import SCREENSHOTS, dock, middle_click, middle_drag, run_3d, wait_idle

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    "order, start, end",
    [((0, 1, 2), 74, 90), ((1, 0, 2), 35, 50)],
    ids=["sliced along axis 0", "sliced along axis 1"],
)
def test_oracle_reproduces_liver_and_kidney_between_start_and_end(
    viewer, qtbot, shared_data, oracle_checkpoint, order, start, end
):
    nibabel = pytest.importorskip("nibabel")
    folder = shared_data / "medct_totalseg_wholebody"
    ct = np.asarray(nibabel.load(folder / "example_ct.nii.gz").dataobj).astype(np.int16)
    truth = np.asarray(nibabel.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    widget, labels, panel = run_3d(
        viewer, qtbot, oracle_checkpoint, ct, truth, order, start, end, ["liver", "kidney right"]
    )
    panel.full.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.screenshot(SCREENSHOTS / f"ct_3d_axis{order[0]}.png", canvas_only=False)
    axis = order[0]
    inside = [slice(None)] * 3
    inside[axis] = slice(start, end + 1)
    inside = tuple(inside)
    for value in (5, 2):
        score = dice(labels.data[inside] == value, truth[inside] == value)
        assert score >= 0.99, f"label {value}: Dice {score:.4f}"
    outside = np.ones(ct.shape, bool)
    outside[inside] = False
    assert not labels.data[outside].any(), "voxels outside the range were written"
    labels.undo()
    assert not labels.data.any(), "undo must remove the whole propagation at once"


def test_cancel_keeps_finished_slices_and_undo_removes_them(viewer, qtbot, shared_data, oracle_checkpoint):
    nibabel = pytest.importorskip("nibabel")
    folder = shared_data / "medct_totalseg_wholebody"
    ct = np.asarray(nibabel.load(folder / "example_ct.nii.gz").dataobj).astype(np.int16)
    truth = np.asarray(nibabel.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 50, 90, ["liver"])

    def cancel_after_five(done, total):
        if done == 5:
            panel.cancel.clicked.emit()

    panel.full.clicked.emit()
    panel.current_run.advanced.connect(cancel_after_five)
    wait_idle(qtbot, widget, timeout=120_000)
    written = sorted({int(i) for i in np.nonzero(labels.data == 5)[0]})
    assert 5 <= len(written) < 41, written
    assert "cancelled" in widget.status.value
    labels.undo()
    assert not labels.data.any()


def test_a_corrected_slice_is_propagated_onward(viewer, qtbot, shared_data, oracle_checkpoint):
    """Correction loop: after a propagation that missed, click the object on a later slice and
    re-propagate from there; the corrected slice and those after it get the object."""
    nibabel = pytest.importorskip("nibabel")
    folder = shared_data / "medct_totalseg_wholebody"
    ct = np.asarray(nibabel.load(folder / "example_ct.nii.gz").dataobj).astype(np.int16)
    truth = np.asarray(nibabel.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 60, 80, ["liver"])
    panel.session.conditioning[70][1][:] = False  # as if the model had lost the liver on the middle slice
    panel.full.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    assert not (labels.data[71:81] == 5).any()

    image = viewer.layers["ct"]
    rows, cols = np.nonzero(truth[75] == 5)
    viewer.dims.set_point(0, 75 * 3.0)
    middle_click(viewer, image.data_to_world((75, rows[len(rows) // 2], cols[len(cols) // 2])))
    wait_idle(qtbot, widget)
    panel.correct.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    assert 75 in panel.session.conditioning, "the correction must stay as a conditioning slice"
    corrected = slice(75, 81)
    assert dice(labels.data[corrected] == 5, truth[corrected] == 5) >= 0.99
    assert not (labels.data[71:75] == 5).any(), "only slices from the correction onward are re-propagated"


def test_the_range_is_embedded_ahead_so_propagation_only_tracks(viewer, qtbot, checkpoint, monkeypatch):
    """Once the range is set and the model loaded (by segmenting the middle slice), the range's slices
    are embedded in the background, and only those: the full segmentation then runs no encoder."""
    volume, truth = battery_phantom(shape=(12, 96, 96))
    image = viewer.add_image(volume, name="cell")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    widget.mode.value = VOLUME_MODE
    panel = widget.volume
    for index, button in ((9, panel.set_end), (2, panel.set_start)):
        viewer.dims.set_point(0, index)
        button.clicked.emit()
    rows, cols = np.nonzero(truth[5] == VOID)
    corner0, corner1 = (5, rows.min() - 2, cols.min() - 2), (5, rows.max() + 2, cols.max() + 2)
    middle_drag(viewer, image.data_to_world(corner0), image.data_to_world(corner1), keys.SHIFT)
    panel.add_box.clicked.emit()
    panel.segment_middle.clicked.emit()
    wait_idle(qtbot, widget)
    segmenter = widget.segmenter_for(widget.model_request())
    embedded = [i for i in range(12) if segmenter.is_embedded(segmenter.plane(0, i))]
    assert embedded == list(range(2, 10))

    encodings = count_embeds(monkeypatch, widget.workspace.loaded)
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert panel.session.propagated and "Propagation done: 8 slices" in widget.status.value
    assert encodings == []
    assert (labels.data[2:10] == widget.label_value.value).any()


def test_brush_edits_set_an_object_on_a_slice_and_replace_its_earlier_result(viewer, qtbot, oracle_checkpoint):
    """Brush edits in the preview: on the middle slice they replace the object's mask before the
    propagation; after it, on a later slice, they become a conditioning slice, the propagation goes
    on from there, and the object's earlier result on that slice is replaced (erased parts too).
    With "Overwrite other labels" on, the user's own label under an erased part comes back."""
    z, y, x = np.mgrid[:20, :48, :56]
    truth = np.zeros((20, 48, 56), np.uint8)
    liver = PROFILES.get("Abdominal CT").class_by_name("liver").value
    truth[((z - 9.5) / 12) ** 2 + ((y - 24) / 16) ** 2 + ((x - 28) / 20) ** 2 <= 1] = liver
    ct = truth.astype(np.int16) * 40 - 100 + (z * 3).astype(np.int16)  # every slice looks different
    scale = (4.0, 0.7, 0.9)  # anisotropic voxels: slices 4 mm apart
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 2, 17, ["liver"], scale)

    def shown(index):
        """The preview on slice ``index``: the one slice it holds must be that one."""
        plane = rwth_sam.SlicePlane.of(ct.shape, 0, index)
        preview = widget._preview_layer
        assert preview.data.shape == (1, 48, 56), "the preview holds one slice, not the volume"
        assert np.allclose(preview.translate, (index * scale[0], 0, 0)), "the preview sits on another slice"
        return widget.preview_mask(plane)

    def erase_right_half(index):
        """napari's eraser in the preview: every pixel right of the object's centre column on ``index``."""
        preview = widget._preview_layer
        rows, cols = np.nonzero(preview.data[0])
        right = cols >= int(cols.mean())
        preview.data_setitem((np.zeros(right.sum(), int), rows[right], cols[right]), 0)
        return shown(index)

    panel.edit.clicked.emit()  # on the middle slice, before any propagation
    preview = widget._preview_layer
    assert viewer.layers.selection.active.name == preview.name and preview.mode == "paint"
    assert np.array_equal(shown(9), truth[9] == liver)
    edited_middle = erase_right_half(9)
    panel.correct.clicked.emit()
    wait_idle(qtbot, widget)
    assert not labels.data.any(), "before the full segmentation, an edit only changes the object's mask"
    assert np.array_equal(panel.session.conditioning[9][1], edited_middle)

    users_own = np.zeros(truth.shape, bool)
    users_own[12:18, 30:, 40:] = True  # a label of the user's, under the liver's lower right part
    labels.data[users_own] = 7
    widget.overwrite_labels.value = True
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert np.array_equal(labels.data[9] == liver, edited_middle)
    assert np.array_equal(labels.data[14] == liver, truth[14] == liver)
    assert (labels.data[users_own] == 7).any() and not (labels.data[users_own & (truth == liver)] == 7).any()
    before = labels.data.copy()

    viewer.dims.set_point(0, 14 * scale[0])
    panel.edit.clicked.emit()
    assert np.array_equal(shown(14), truth[14] == liver)  # the object as the labels hold it
    edited = erase_right_half(14)
    panel.correct.clicked.emit()
    wait_idle(qtbot, widget)
    assert np.array_equal(labels.data[14] == liver, edited), "the erased part must be gone from the labels"
    erased = (truth[14] == liver) & ~edited
    assert (erased & users_own[14]).any()
    assert (labels.data[14][erased & users_own[14]] == 7).all(), "the overwritten label of the user's must come back"
    assert not labels.data[14][erased & ~users_own[14]].any()
    assert np.array_equal(panel.session.conditioning[14][1], edited)
    assert np.array_equal(labels.data[:14], before[:14]), "slices before the correction must not change"
    assert np.array_equal(labels.data[15:18] == liver, truth[15:18] == liver)
    assert (labels.data[users_own & (truth != liver)] == 7).all()
    labels.undo()
    assert np.array_equal(labels.data, before), "undo restores the result before the correction"


def test_flagged_slices_are_listed_and_shown_in_turn(viewer, qtbot, oracle_checkpoint):
    """An object whose area triples from one slice to the next is flagged there; the button shows
    the flagged slice with the reason."""
    truth = np.zeros((16, 40, 48), np.uint8)
    liver = PROFILES.get("Abdominal CT").class_by_name("liver").value
    truth[:, 10:30, 10:20] = liver
    truth[9:, 10:30, 20:42] = liver  # from slice 9 on, the object is 3.2 times as large
    ct = truth.astype(np.int16) * 40 - 100 + np.arange(16, dtype=np.int16)[:, None, None] * 3
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 2, 13, ["liver"])
    assert not panel.next_flag.enabled
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert [flag[:2] for flag in panel.session.flags] == [(9, 1)]
    assert "slice 9" in panel.flags_label.value and panel.next_flag.enabled
    assert widget.messages.kept[0].endswith("To check: slice 9."), "kept at the top until dismissed"
    viewer.dims.set_point(0, 12 * 3.0)
    panel.next_flag.clicked.emit()  # after the last flagged slice: back to the first
    assert round(viewer.dims.point[0] / 3.0) == 9
    assert widget.status.value.startswith("Slice 9: object 1: area")


def liver_volume():
    """A synthetic liver over slices 0–19 of a (20, 48, 56) CT, every slice looking different."""
    z, y, x = np.mgrid[:20, :48, :56]
    truth = np.zeros((20, 48, 56), np.uint8)
    liver = PROFILES.get("Abdominal CT").class_by_name("liver").value
    truth[((z - 9.5) / 12) ** 2 + ((y - 24) / 16) ** 2 + ((x - 28) / 20) ** 2 <= 1] = liver
    return truth.astype(np.int16) * 40 - 100 + (z * 3).astype(np.int16), truth, liver


def test_refine_after_the_intensity_window_changed_starts_from_the_box(viewer, qtbot, oracle_checkpoint, monkeypatch):
    """The defect: the 3D session was reset only when the sliced axis changed, so after a change of
    the intensity window *Refine* fed the model the logits it had predicted under the old window
    (from another embedding). Now they are dropped; the session (range, objects, masks) stays."""
    ct, truth, liver = liver_volume()
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 2, 17, ["liver"], (1, 1, 1))
    image = viewer.layers["ct"]
    fed = []
    original = Segmenter.predict

    def recording(self, plane, points=None, labels=None, box=None, mask_logits=None, **kwargs):
        if points is not None and box is not None:  # a refinement: the clicks with the object's box
            fed.append(mask_logits)
        return original(self, plane, points, labels, box=box, mask_logits=mask_logits, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", recording)

    def refine():
        middle_click(viewer, image.data_to_world((9, 24, 28)))
        wait_idle(qtbot, widget)
        panel.refine.clicked.emit()
        wait_idle(qtbot, widget)

    refine()
    assert len(fed) == 1 and fed[0] is not None, "under the same window, Refine goes on from the last logits"
    image.contrast_limits = (-200, 300)
    window = rwth_sam.IntensityWindow(-200, 300)
    for index in range(ct.shape[0]):  # the oracle recognises the slices under the new window too
        rgb = rwth_sam.to_rgb(ct[index], window)
        OraclePredictor.truth_by_slice[hashlib.blake2b(rgb.tobytes()).digest()] = truth[index]
    qtbot.wait(500)  # the widget re-segments once the contrast limits stop changing
    wait_idle(qtbot, widget)
    refine()
    assert len(fed) == 2 and fed[1] is None, "the old window's logits were fed after the window changed"
    assert (
        panel.range_label.value == "Slices 2–17 (axis 0), middle 9" and panel.objects_label.value == "Objects: 1 liver"
    )
    assert np.array_equal(panel.session.conditioning[9][1], truth[9] == liver)
    refine()
    assert len(fed) == 3 and fed[2] is not None, "the new window's logits serve the next refinement"


@pytest.mark.parametrize("switch", ["another image", "another model"])
def test_after_switching_the_image_or_the_model_nothing_of_the_old_session_is_used(
    viewer, qtbot, oracle_checkpoint, switch
):
    ct, truth, liver = liver_volume()
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 2, 17, ["liver"], (1, 1, 1))
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert "Propagation done: 16 slices" in widget.status.value
    written = labels.data.copy()
    if switch == "another image":
        widget.image_picker.value = viewer.add_image(ct.copy(), name="ct 2", contrast_limits=(-160, 240))
    else:
        widget.model.changed.emit(ORACLE)
    assert panel.range_label.value == "Range: not set" and panel.objects_label.value == "Objects: none"
    assert panel.object_choice.choices == () and panel.flags_label.value == "" and not panel.next_flag.enabled
    panel.full.clicked.emit()
    assert widget.status.value == "Segment the middle slice first."
    panel.refine.clicked.emit()
    assert widget.status.value == "Set the start and the end slice first."
    viewer.dims.set_point(0, 2)
    panel.set_start.clicked.emit()
    viewer.dims.set_point(0, 17)
    panel.set_end.clicked.emit()
    panel.correct.clicked.emit()
    assert widget.status.value == "Add a box for at least one object first."
    panel.segment_middle.clicked.emit()
    assert widget.status.value == "Add a box for at least one object first."
    wait_idle(qtbot, widget)
    assert np.array_equal(labels.data, written)


def test_a_propagation_in_a_region_around_the_first_box_segments_and_writes_that_region_only(
    viewer, qtbot, oracle_checkpoint
):
    from rwth_sam.ui.widget import BOX_REGION, BOX_REGION_MIN

    from napari_helpers import teach_oracle

    shape = (16, 400, 500)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    organ = ((z - 8) / 7.0) ** 2 + ((y - 200) / 20.0) ** 2 + ((x - 330) / 25.0) ** 2 <= 1
    ct = np.where(organ, 60, -900).astype(np.int16)
    ct[:, 300:, :100] = 60  # another bright part, far from the box: it must stay out of the result
    truth = np.where(organ, 5, 0).astype(np.uint8)
    image = viewer.add_image(ct, name="ct", contrast_limits=(-160, 240))
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value, widget.checkpoint.value, widget.device.value = ORACLE, oracle_checkpoint, "cpu"
    labels = widget.create_labels_layer()
    widget.profile.value = "Abdominal CT"
    widget.classes.value = PROFILES.get("Abdominal CT").class_by_name("liver")
    widget.mode.value = VOLUME_MODE
    widget.model_sees.value = BOX_REGION
    panel = widget.volume
    for index, button in ((3, panel.set_start), (13, panel.set_end)):
        viewer.dims.set_point(0, index)
        button.clicked.emit()
    # the box is 52 × 42 around (row 200, column 330): the region is the least square, 256 px, centred there
    row0, row1, col0, col1 = (
        200 - BOX_REGION_MIN // 2,
        200 + BOX_REGION_MIN // 2,
        330 - BOX_REGION_MIN // 2,
        330 + BOX_REGION_MIN // 2,
    )
    teach_oracle(ct[:, row0:row1, col0:col1], truth[:, row0:row1, col0:col1], 0, rwth_sam.IntensityWindow(-160, 240))
    middle_drag(viewer, image.data_to_world((8, 179, 304)), image.data_to_world((8, 221, 356)), keys.SHIFT)
    panel.add_box.clicked.emit()
    assert panel.session.region == (row0, row1, col0, col1)

    panel.segment_middle.clicked.emit()
    wait_idle(qtbot, widget)
    panel.full.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    written = np.asarray(labels.data)
    inside = np.zeros(shape, bool)
    inside[3:14, row0:row1, col0:col1] = True
    assert dice(written[inside] == 5, truth[inside] == 5) >= 0.99, widget.status.value
    assert not written[~inside].any(), "nothing outside the region and the range"


@pytest.mark.parametrize("model_sees", ["Whole slice", "Region around the box"])
def test_a_transposed_view_propagates_what_the_upright_one_does(viewer, qtbot, checkpoint, model_sees):
    """Rows along the higher axis (axis order (0, 2, 1)): the box, the middle slice and the propagation are
    the upright view's, voxel for voxel (they were transposed, and refused for non-square slices)."""
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 120, (9, 300, 340)).astype(np.uint8)
    volume[:, 100:180, 60:150] = 230
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    widget.model_sees.value = model_sees
    widget.mode.value = VOLUME_MODE
    panel = widget.volume
    results = []
    for order in ((0, 1, 2), (0, 2, 1)):
        labels = widget.create_labels_layer()
        viewer.dims.order = order
        for index, button in ((7, panel.set_end), (1, panel.set_start)):
            viewer.dims.set_point(0, float(index))
            button.clicked.emit()
        corners = [image.data_to_world(np.array([4.0, 95, 55])), image.data_to_world(np.array([4.0, 185, 155]))]
        middle_drag(viewer, *corners, keys.SHIFT)
        panel.add_box.clicked.emit()
        assert len(panel.session.objects) == 1, widget.status.value
        panel.segment_middle.clicked.emit()
        wait_idle(qtbot, widget)
        panel.full.clicked.emit()
        wait_idle(qtbot, widget, timeout=120_000)
        assert "Propagation done: 7 slices" in widget.status.value, widget.status.value
        results.append((panel.session.objects[0].box, panel.session.region, np.array(labels.data)))
        panel.session.reset()
    (box, region, upright), (box_t, region_t, transposed) = results
    np.testing.assert_allclose(box_t, box)
    assert region_t == region and (region is None) == (model_sees == "Whole slice")
    assert upright[1:8].any() and not upright[[0, 8]].any()
    np.testing.assert_array_equal(transposed, upright)
