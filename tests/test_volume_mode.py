"""3D mode in the widget: range, boxes on the middle slice, propagation, cancel and undo.

The oracle test runs the whole pipeline (buttons in order, propagation, writing into the labels
layer) on the real whole-body CT with a stand-in model that answers a box with the true organ
region under it: the pipeline must then reproduce the reference labels between start and end.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_widget import SCREENSHOTS, middle_click, middle_drag, viewer, wait_idle  # noqa: F401
from vispy.util import keys

import rwth_sam
from rwth_sam.core.predictors.base import Embedding, Prediction, Predictor
from rwth_sam.ui.profile_store import PROFILES
from rwth_sam.ui.widget import VOLUME_MODE

pytestmark = pytest.mark.gui

ORACLE = "oracle (tests)"


class OraclePredictor(Predictor):
    """Answers a box with the true region under it: the truth slice is found from the embedded pixels."""

    truth_by_slice: dict[bytes, np.ndarray] = {}

    @property
    def input_size(self) -> int:
        return 1024

    def _embed(self, rgb):
        return Embedding(hashlib.blake2b(rgb.tobytes()).digest(), rgb.shape[:2], self.name)

    def _predict(self, embedding, prompts, multimask, all_masks):
        truth = self.truth_by_slice[embedding.features]
        if prompts.box is None:  # a click: the true region under the first point
            x, y = np.round(prompts.points[0]).astype(int)
            x0, y0, x1, y1 = x, y, x, y
        else:
            x0, y0, x1, y1 = np.round(prompts.box).astype(int)
        inside = truth[y0 : y1 + 1, x0 : x1 + 1]
        values, counts = np.unique(inside[inside > 0], return_counts=True)
        mask = np.zeros(truth.shape, bool)
        if len(values):
            components, _ = ndimage.label(truth == values[np.argmax(counts)])
            touched = np.unique(components[y0 : y1 + 1, x0 : x1 + 1])
            mask = np.isin(components, touched[touched > 0])
        return Prediction(mask[None], np.array([1.0], np.float32), np.zeros((1, 256, 256), np.float32))


@pytest.fixture(scope="module")
def oracle_checkpoint(tmp_path_factory):
    rwth_sam.register_model(
        rwth_sam.ModelSpec(
            name=ORACLE, family="test", title="Oracle", build=lambda: torch.nn.Linear(1, 1),
            make_predictor=lambda module, name, device: OraclePredictor(module, name, device),
        ),
        replace=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("oracle") / "oracle.pt"
    torch.save(torch.nn.Linear(1, 1).state_dict(), path)
    yield path
    rwth_sam.unregister_model(ORACLE)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def run_3d(viewer, qtbot, checkpoint, ct, truth, order, start, end, organs):
    """Drive the 3D buttons in order, as a user would; returns the widget and the labels layer."""
    viewer.window.resize(1500, 950)
    image = viewer.add_image(ct, name="ct", scale=(3.0, 3.0, 3.0), contrast_limits=(-160, 240))
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value, widget.checkpoint.value, widget.device.value = ORACLE, checkpoint, "cpu"
    labels = widget.create_labels_layer()
    widget.profile.value = "Abdominal CT"
    widget.mode.value = VOLUME_MODE
    viewer.dims.order = order
    axis = order[0]
    window = rwth_sam.IntensityWindow(*image.contrast_limits)
    OraclePredictor.truth_by_slice = {}
    for index in range(ct.shape[axis]):
        plane = rwth_sam.SlicePlane.of(ct.shape, axis, index)
        rgb = rwth_sam.to_rgb(np.asarray(plane.take(ct)), window)
        OraclePredictor.truth_by_slice[hashlib.blake2b(rgb.tobytes()).digest()] = np.asarray(plane.take(truth))

    panel = widget.volume
    for index, button in ((end, panel.set_end), (start, panel.set_start)):  # either order
        viewer.dims.set_point(axis, index * 3.0)
        button.clicked.emit()
    middle = (start + end) // 2
    assert panel.range_label.value == f"Slices {start}–{end} (axis {axis}), middle {middle}"
    assert round(viewer.dims.point[axis] / 3.0) == middle, "the view did not move to the middle slice"

    middle_plane = rwth_sam.SlicePlane.of(ct.shape, axis, middle)
    for name in organs:
        cls = PROFILES.get("Abdominal CT").class_by_name(name)
        widget.classes.value = cls
        rows, cols = np.nonzero(np.asarray(middle_plane.take(truth)) == cls.value)
        corner0, corner1 = np.zeros(3), np.zeros(3)
        corner0[axis] = corner1[axis] = middle
        corner0[[middle_plane.row_axis, middle_plane.col_axis]] = rows.min() - 1, cols.min() - 1
        corner1[[middle_plane.row_axis, middle_plane.col_axis]] = rows.max() + 1, cols.max() + 1
        middle_drag(viewer, image.data_to_world(corner0), image.data_to_world(corner1), keys.SHIFT)
        panel.add_box.clicked.emit()
    assert len(panel.objects) == len(organs)
    panel.segment_middle.clicked.emit()
    wait_idle(qtbot, widget)
    assert set(panel.conditioning[middle]) == set(range(1, len(organs) + 1))
    return widget, labels, panel


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
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, order, start, end, ["liver", "kidney right"])
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

    panel.progress.advanced.connect(cancel_after_five)
    panel.full.clicked.emit()
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
    panel.conditioning[70][1][:] = False  # as if the model had lost the liver on the middle slice
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
    assert 75 in panel.conditioning, "the correction must stay as a conditioning slice"
    corrected = slice(75, 81)
    assert dice(labels.data[corrected] == 5, truth[corrected] == 5) >= 0.99
    assert not (labels.data[71:75] == 5).any(), "only slices from the correction onward are re-propagated"
