"""Volumes of any size (issue 12): lazy and multiscale images in click, automatic and 3D modes, what
they read, and helper layers of one slice.

Each mode is driven twice in one viewer and widget, on the volume as a numpy array and then on the
same voxels as a dask, zarr, HDF5-backed (dask on h5py) or multiscale (pyramid) layer: the previews,
labels and automatic results must be equal bit for bit. A counting array-like stands in for a
volume that does not fit in memory: it records every key read and refuses to be read whole.
"""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr
from vispy.util import keys

import rwth_sam
from rwth_sam.core.files.hdf5 import read_hdf5
from rwth_sam.core.phantom import VOID, battery_phantom
from rwth_sam.core.preprocessing import PERCENTILES, SAMPLED_SLICES
from rwth_sam.ui.widget import AUTOMATIC_MODE, HELPER_LAYER, VOLUME_MODE

from conftest import ORACLE, PERMISSIVE, CountingVolume
from napari_helpers import dock, middle_click, middle_drag, teach_oracle, wait_idle

pytestmark = pytest.mark.gui

BACKENDS = ["dask", "zarr", "hdf5", "multiscale"]
LIMITS = (0, 9000)  # given, not computed: napari computes a lazy or multiscale layer's limits otherwise


def cell_volume(depth: int = 8, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The battery phantom as uint16 detector counts (every slice a little different), and its truth."""
    volume, truth = battery_phantom(shape=(depth, size, size))
    offsets = (np.arange(depth, dtype=np.uint16) % 32) * 50  # a grey level apart after the window
    counts = volume.astype(np.uint16) * 30 + offsets[:, None, None]
    return counts, truth


def stored_as(kind: str, volume: np.ndarray, tmp_path):
    """``volume`` as the data of an image layer of that kind (small chunks, so a slice is several)."""
    if kind == "dask":
        return da.from_array(volume, chunks=(1, 32, 32))
    if kind == "zarr":
        path = tmp_path / "volume.zarr"
        zarr.open_array(path, mode="w", shape=volume.shape, chunks=(1, 32, 32), dtype=volume.dtype)[...] = volume
        return zarr.open_array(path, mode="r")
    if kind == "hdf5":
        with h5py.File(tmp_path / "volume.h5", "w") as handle:
            handle.create_dataset("exchange/data", data=volume, chunks=(1, 32, 32))
        return read_hdf5(tmp_path / "volume.h5")[0].data
    if kind == "multiscale":  # lazy levels, as an OME-Zarr pyramid opens
        return [da.from_array(volume, chunks=(1, 32, 32)), da.from_array(volume[:, ::2, ::2], chunks=(1, 16, 16))]
    raise AssertionError(kind)


def numpy_and(kind: str, viewer, volume, tmp_path):
    """Two image layers of the same voxels: the numpy array, then the array of ``kind``."""
    in_memory = viewer.add_image(volume, name="numpy", contrast_limits=LIMITS)
    data = stored_as(kind, volume, tmp_path)
    lazy = viewer.add_image(data, name=kind, contrast_limits=LIMITS, multiscale=kind == "multiscale")
    assert lazy.multiscale == (kind == "multiscale")
    assert not isinstance(lazy.data[0] if lazy.multiscale else lazy.data, np.ndarray), "napari read it into memory"
    return in_memory, lazy


def propagate_a_box(viewer, qtbot, widget, image, start: int, end: int, corner0, corner1) -> None:
    """3D mode as a user goes through it: the range (end first), a box on the middle slice between two
    data corners, *Segment middle slice*, *Full segmentation*."""
    panel = widget.volume
    for index, button in ((end, panel.set_end), (start, panel.set_start)):
        show_slice(viewer, image, index)
        button.clicked.emit()
    middle_drag(viewer, image.data_to_world(corner0), image.data_to_world(corner1), keys.SHIFT)
    panel.add_box.clicked.emit()
    panel.segment_middle.clicked.emit()
    wait_idle(qtbot, widget)
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)


def show_slice(viewer, image, index: int) -> None:
    viewer.dims.set_point(0, image.data_to_world((index, 0, 0))[0])


# ----------------------------------------------------------------------------- the same results


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_click_and_submit_give_the_numpy_arrays_preview_and_labels(viewer, checkpoint, qtbot, tmp_path, kind):
    volume, _ = cell_volume()
    widget = dock(viewer, checkpoint)
    results = []
    for image in numpy_and(kind, viewer, volume, tmp_path):
        widget.image_picker.value = image
        labels = widget.create_labels_layer()
        show_slice(viewer, image, 4)
        middle_click(viewer, image.data_to_world((4, 40, 22)))
        wait_idle(qtbot, widget)
        plane = widget.prompts.plane
        assert (plane.axis, plane.index) == (0, 4)
        preview = widget.preview_mask(plane)
        widget.submit()
        results.append((preview, np.asarray(labels.data).copy()))
    (preview, labels), (lazy_preview, lazy_labels) = results
    assert 0 < preview.sum() < preview.size and (labels[4] == 1).sum() == preview.sum()
    assert not np.delete(labels, 4, axis=0).any()
    np.testing.assert_array_equal(lazy_preview, preview)
    np.testing.assert_array_equal(lazy_labels, labels)


@pytest.mark.parametrize("kind", BACKENDS)
def test_automatic_mode_on_a_slice_gives_the_numpy_arrays_objects(viewer, checkpoint, qtbot, tmp_path, kind):
    volume, _ = cell_volume()
    widget = dock(viewer, checkpoint)
    widget.mode.value = AUTOMATIC_MODE
    for name, value in PERMISSIVE.items():
        widget.automatic.setting_controls[name].value = value
    results = []
    for image in numpy_and(kind, viewer, volume, tmp_path):
        widget.image_picker.value = image
        show_slice(viewer, image, 5)
        widget.automatic.segment_slice()
        wait_idle(qtbot, widget)
        result = widget.automatic.result_layer
        assert result.name == f"{image.name} automatic" and result.data.shape == volume.shape
        results.append(np.asarray(result.data).copy())
    objects, lazy_objects = results
    assert 0 < (objects[5] > 0).sum() < objects[5].size, widget.status.value
    assert not np.delete(objects, 5, axis=0).any()
    np.testing.assert_array_equal(lazy_objects, objects)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_propagation_gives_the_numpy_arrays_labels(viewer, oracle_checkpoint, qtbot, tmp_path, kind):
    """The oracle answers a box with the true region under it, found from the slice the model was
    shown: a slice read or windowed differently from the numpy array's is not found at all."""
    volume, truth = cell_volume()
    teach_oracle(volume, truth, 0, rwth_sam.IntensityWindow(*LIMITS))
    widget = dock(viewer, oracle_checkpoint)
    widget.model.value = ORACLE
    widget.mode.value = VOLUME_MODE
    panel = widget.volume
    rows, cols = np.nonzero(truth[4] == VOID)
    corner0, corner1 = (4, rows.min() - 1, cols.min() - 1), (4, rows.max() + 1, cols.max() + 1)
    results = []
    for image in numpy_and(kind, viewer, volume, tmp_path):
        widget.image_picker.value = image
        labels = widget.create_labels_layer()
        propagate_a_box(viewer, qtbot, widget, image, 2, 6, corner0, corner1)
        assert panel.range_label.value == "Slices 2–6 (axis 0), middle 4"
        assert "Propagation done: 5 slices" in widget.status.value
        results.append(np.asarray(labels.data).copy())
    written, lazy_written = results
    np.testing.assert_array_equal(written[2:7] == 1, truth[2:7] == VOID)
    assert not written[[0, 1, 7]].any()
    np.testing.assert_array_equal(lazy_written, written)


# ----------------------------------------------------------------------------- what is read


def counted_zarr(volume, tmp_path) -> CountingVolume:
    return CountingVolume(stored_as("zarr", volume, tmp_path))


def test_a_click_and_an_automatic_run_read_only_their_slice(viewer, checkpoint, qtbot, tmp_path):
    """With the layer's contrast limits as the window, only the slice clicked (napari's display reads
    the slice shown, the same one)."""
    volume, _ = cell_volume(depth=40)
    counting = counted_zarr(volume, tmp_path)
    image = viewer.add_image(counting, name="counted", contrast_limits=LIMITS)
    widget = dock(viewer, checkpoint)
    show_slice(viewer, image, 23)
    qtbot.wait(50)
    counting.slices_read()
    middle_click(viewer, image.data_to_world((23, 40, 22)))
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction is not None, widget.status.value
    assert counting.slices_read() == {23}

    widget.mode.value = AUTOMATIC_MODE
    for name, value in PERMISSIVE.items():
        widget.automatic.setting_controls[name].value = value
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget)
    assert widget.automatic.result_layer.data[23].any(), widget.status.value
    assert counting.slices_read() == {23}


def test_a_click_with_a_percentile_window_reads_its_slice_and_the_sampled_ones(viewer, checkpoint, qtbot, tmp_path):
    volume, _ = cell_volume(depth=40)
    counting = counted_zarr(volume, tmp_path)
    image = viewer.add_image(counting, name="counted", contrast_limits=LIMITS)
    widget = dock(viewer, checkpoint)
    widget.window.value = PERCENTILES
    show_slice(viewer, image, 23)
    qtbot.wait(50)
    counting.slices_read()
    middle_click(viewer, image.data_to_world((23, 40, 22)))
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction is not None, widget.status.value
    sampled = {int(i) for i in np.linspace(0, 39, SAMPLED_SLICES).round()}
    assert counting.slices_read() == sampled | {23}


def test_a_propagation_reads_only_the_slices_of_its_range(viewer, checkpoint, qtbot, tmp_path):
    """SAM 2's video predictor, fed slice by slice from the volume: setting the range, embedding it
    ahead, the middle slice and the propagation read the range's slices and no other."""
    volume, truth = cell_volume(depth=40)
    counting = counted_zarr(volume, tmp_path)
    image = viewer.add_image(counting, name="counted", contrast_limits=LIMITS)
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    widget.mode.value = VOLUME_MODE
    show_slice(viewer, image, 22)
    qtbot.wait(50)
    counting.slices_read()
    rows, cols = np.nonzero(truth[21] == VOID)
    corner0, corner1 = (21, rows.min() - 2, cols.min() - 2), (21, rows.max() + 2, cols.max() + 2)
    propagate_a_box(viewer, qtbot, widget, image, 20, 22, corner0, corner1)
    assert "Propagation done: 3 slices" in widget.status.value
    assert np.asarray(labels.data)[20:23].any()
    assert counting.slices_read() == {20, 21, 22}


# ----------------------------------------------------------------------------- helper layers of one slice


def helper_bytes(viewer) -> dict[str, int]:
    """The bytes each of the widget's own layers holds as data, by its role (one layer each)."""
    held = {}
    for layer in viewer.layers:
        if HELPER_LAYER in layer.metadata:
            assert layer.metadata[HELPER_LAYER] not in held, f"two {layer.metadata[HELPER_LAYER]} layers"
            parts = layer.data if isinstance(layer.data, list) else [layer.data]
            held[layer.metadata[HELPER_LAYER]] = sum(np.asarray(part).nbytes for part in parts)
    return held


def test_the_preview_prompts_and_box_hold_one_slice_whatever_the_volume(viewer, checkpoint, qtbot):
    """After clicks and a box on a 30- and a 300-slice volume, the helper layers hold the same few
    kilobytes: at most what one slice of 32-bit values takes."""
    budget = 64 * 64 * 4
    held = {}
    widget = dock(viewer, checkpoint)
    for depth in (30, 300):
        volume, truth = cell_volume(depth=depth)
        image = viewer.add_image(volume, name=f"{depth} slices", contrast_limits=LIMITS)
        widget.image_picker.value = image
        widget.create_labels_layer()
        middle = depth // 2
        show_slice(viewer, image, middle)
        middle_click(viewer, image.data_to_world((middle, 40, 22)))
        middle_click(viewer, image.data_to_world((middle, 10, 12)), keys.CONTROL)
        rows, cols = np.nonzero(truth[middle] == VOID)
        corner0, corner1 = (middle, rows.min() - 2, cols.min() - 2), (middle, rows.max() + 2, cols.max() + 2)
        middle_drag(viewer, image.data_to_world(corner0), image.data_to_world(corner1), keys.SHIFT)
        wait_idle(qtbot, widget)
        assert widget.preview_mask(widget.prompts.plane).any(), widget.status.value
        layers = (widget._preview_layer, widget._points_layer, widget._box_layer)
        assert [layer.metadata[HELPER_LAYER] for layer in layers] == ["preview", "prompts", "box"]
        assert widget._preview_layer.data.shape == (1, 64, 64)
        assert len(widget._points_layer.data) == 2 and len(widget._box_layer.data) == 1
        held[depth] = helper_bytes(viewer)
        assert set(held[depth]) == {"preview", "prompts", "box"}
        assert widget._preview_layer.data.nbytes <= budget and sum(held[depth].values()) <= budget, held
        widget.submit()
        assert sum(helper_bytes(viewer).values()) <= budget, "after the submit"
    assert held[300] == held[30], "the helper layers grow with the number of slices"
