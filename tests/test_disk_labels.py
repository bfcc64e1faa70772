"""Labels on disk (zarr) for volumes whose labels do not fit in memory: made by *New labels layer for
image* above the size the user sets, written by submit, propagation, undo and the brush chunk by chunk,
and opened again from their folder to go on with."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from rwth_sam.core.labels.disk_labels import (
    LABELS_DTYPE,
    create_disk_labels,
    disk_chunks,
    disk_labels_layer,
    free_labels_path,
    labels_bytes,
    largest_value,
)
from rwth_sam.core.labels.labelling import next_instance_id

from conftest import CountingVolume, dice
from napari_helpers import run_3d, wait_idle


def test_a_new_disk_labels_folder_never_replaces_one_and_costs_nothing_until_written(tmp_path):
    first = create_disk_labels(free_labels_path(tmp_path, "ct labels"), (40, 300, 280), {"name": "ct labels"})
    second = create_disk_labels(free_labels_path(tmp_path, "ct labels"), (40, 300, 280), {"name": "ct labels"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ct_labels-2.zarr", "ct_labels.zarr"]
    assert first.dtype == LABELS_DTYPE and first.chunks == disk_chunks((40, 300, 280)) == (8, 256, 256)
    stored = sum(file.stat().st_size for file in (tmp_path / "ct_labels.zarr").rglob("*") if file.is_file())
    assert stored < 4096, "an empty labels array stores no chunks"
    second[3, 10:20, 5:9] = 7
    array, layer = disk_labels_layer(tmp_path / "ct_labels-2.zarr")
    assert layer == {"name": "ct labels"} and int(array[3, 15, 6]) == 7
    assert disk_labels_layer(tmp_path) is None, "a folder that is not rwth-sam's labels"
    assert labels_bytes((2560, 2560, 2560)) == 4 * 2560**3


def test_the_largest_label_of_a_disk_array_is_read_slab_by_slab(tmp_path, monkeypatch):
    import rwth_sam.core.labels.disk_labels as disk_labels

    array = create_disk_labels(tmp_path / "l.zarr", (30, 20, 10), {})
    array[29, 19, 9] = 41
    array[2, 0, 0] = 5
    monkeypatch.setattr(disk_labels, "MAX_SLAB", 400)  # two slices of 200 voxels at a time
    assert largest_value(array) == 41
    assert next_instance_id(array) == 42
    assert next_instance_id(np.zeros((3, 3), np.uint8)) == 1


@pytest.mark.gui
def test_labels_on_disk_take_a_propagation_undo_the_brush_and_open_again(viewer, qtbot, tmp_path, oracle_checkpoint):
    nibabel = pytest.importorskip("nibabel")
    shape = (24, 40, 48)  # (z, y, x) as shown; the file is written (x, y, z) in LPS, so shown as stored
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    organ = ((z - 12) / 9.0) ** 2 + ((y - 20) / 12.0) ** 2 + ((x - 24) / 15.0) ** 2 <= 1
    ct = np.where(organ, 60, -900).astype(np.int16)
    truth = np.where(organ, 5, 0).astype(np.uint8)  # 5: liver in the Abdominal CT profile
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])
    affine[:3, 3] = (30.0, 40.0, -50.0)
    nibabel.save(nibabel.Nifti1Image(ct.transpose(2, 1, 0), affine), tmp_path / "ct.nii.gz")
    [image] = viewer.open(tmp_path / "ct.nii.gz", plugin="rwth-sam")
    widget, labels, panel = run_3d(
        viewer, qtbot, oracle_checkpoint, image, truth, (0, 1, 2), 5, 19, ["liver"], on_disk_above=0.0
    )
    assert isinstance(labels.data, zarr.Array), "above the size set, the labels are a zarr array on disk"
    folder = tmp_path / "ct_labels.zarr"
    assert folder.is_dir(), "beside the image's file"

    panel.full.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)
    on_disk = zarr.open_array(folder, mode="r")[...]
    assert dice(on_disk[5:20] == 5, truth[5:20] == 5) >= 0.99, "the propagation was written to disk"
    assert not on_disk[:5].any() and not on_disk[20:].any()

    labels.undo()
    assert not zarr.open_array(folder, mode="r")[...].any(), "undo takes the whole propagation back, on disk"
    labels.redo()
    labels.paint((12, 2, 2), 9)  # the brush (size 10) in a corner outside the organ
    painted = zarr.open_array(folder, mode="r")[...]
    assert (painted[12] == 9).sum() > 10 and dice(painted == 5, truth == 5) > 0.9
    labels.undo()
    assert not (zarr.open_array(folder, mode="r")[...] == 9).any(), "undo takes the brush stroke back"

    viewer.layers.remove(labels)  # as in a later session
    [reopened] = viewer.open(folder, plugin="rwth-sam")
    assert reopened.__class__.__name__ == "Labels" and reopened.name == "ct labels"
    np.testing.assert_allclose(reopened.scale, image.scale)
    np.testing.assert_allclose(reopened.translate, image.translate)
    assert reopened.metadata["rwth_sam_source"]["source"] == str(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(np.asarray(reopened.data[...]), zarr.open_array(folder, mode="r")[...])


def test_labels_on_disk_are_saved_as_tiff_slice_by_slice(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from rwth_sam.ui.volume_files import write_labels

    stored = create_disk_labels(tmp_path / "big.zarr", (12, 40, 30), {})
    stored[3, 5:9, 2:4] = 300
    stored[10, 0, 0] = 2
    counting = CountingVolume(stored)  # refuses to be read whole, as a volume larger than memory would
    steps = []
    written = write_labels(
        str(tmp_path / "big.tif"), counting, {"name": "big", "scale": (1, 1, 1), "translate": (0, 0, 0)},
        lambda *step: steps.append(step),
    )  # fmt: skip
    assert written == [str(tmp_path / "big.tif")] and steps[-1] == (12, 12)
    saved = tifffile.imread(tmp_path / "big.tif")
    assert saved.dtype == np.uint16, "the smallest type that holds label 300"
    np.testing.assert_array_equal(saved, stored[...])
    assert counting.keys and all(isinstance(key, slice) for key in counting.keys), "read in slabs of slices"
    assert len(counting.keys) == 2, "each slab read once for the label values and once for the pages"


def test_labels_on_disk_too_large_for_memory_are_not_read_for_a_whole_array_format(tmp_path, monkeypatch):
    import psutil

    from rwth_sam.ui.volume_files import LabelsNotSaved, write_labels

    stored = create_disk_labels(tmp_path / "big.zarr", (12, 40, 30), {})
    counting = CountingVolume(stored)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 100_000})())
    with pytest.raises(LabelsNotSaved, match=r"written whole from memory .* save them as \.tif or \.nii\.gz"):
        write_labels(str(tmp_path / "big.nrrd"), counting, {"name": "big", "scale": (1, 1, 1), "translate": (0,) * 3})
    assert not counting.keys and not (tmp_path / "big.nrrd").exists()


def test_labels_on_disk_are_saved_as_nifti_slab_by_slab(tmp_path, monkeypatch):
    import psutil
    import SimpleITK as sitk

    import rwth_sam.ui.volume_files as volume_files
    from rwth_sam.ui.volume_files import write_labels

    stored = create_disk_labels(tmp_path / "big.zarr", (12, 40, 30), {})
    stored[3, 5:9, 2:4] = 300
    stored[10, 0, 0] = 2
    counting = CountingVolume(stored)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 100_000})())
    monkeypatch.setattr(volume_files, "MAX_SLAB", 6 * 40 * 30)  # two slabs of six slices
    steps = []
    meta = {"name": "big", "scale": (2.0, 0.5, 0.5), "translate": (10.0, 0.0, 0.0)}
    written = write_labels(str(tmp_path / "big.nii.gz"), counting, meta, lambda *step: steps.append(step))
    assert written == [str(tmp_path / "big.nii.gz")] and steps == [(0, 12), (6, 12), (12, 12)]
    assert counting.keys[1:] == [(slice(0, 6),), (slice(6, 12),)], "after the scan for label values: two slabs"
    saved = sitk.ReadImage(str(tmp_path / "big.nii.gz"))
    assert saved.GetPixelID() == sitk.sitkUInt16, "the smallest type that holds label 300"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), stored[...])
    np.testing.assert_allclose(saved.GetSpacing(), (0.5, 0.5, 2.0))
    np.testing.assert_allclose(saved.GetOrigin(), (0.0, 0.0, 10.0))


@pytest.mark.gui
def test_an_automatic_result_above_the_size_goes_to_disk_and_its_objects_to_the_labels(
    viewer, checkpoint, qtbot, rng, tmp_path
):
    tifffile = pytest.importorskip("tifffile")
    from rwth_sam.ui.widget import AUTOMATIC_MODE

    from conftest import PERMISSIVE
    from napari_helpers import dock, left_click

    volume = rng.integers(0, 255, (4, 48, 48)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cell.tif", volume, photometric="minisblack")
    image = viewer.add_image(volume, name="cell")
    image.metadata["rwth_sam_source"] = {  # as if read with its geometry: disk labels go beside the file
        "size": [48, 48, 4], "spacing": [1.0] * 3, "origin": [0.0] * 3, "direction": list(np.eye(3).ravel()),
        "display_axes": [0, 1, 2], "display_flips": [False] * 3, "source": str(tmp_path / "cell.tif"),
    }  # fmt: skip
    widget = dock(viewer, checkpoint)
    widget.labels_on_disk_above.value = 0.0
    widget.mode.value = AUTOMATIC_MODE
    for name, value in PERMISSIVE.items():
        widget.automatic.setting_controls[name].value = value
    labels = widget.create_labels_layer()
    viewer.dims.set_point(0, 2)
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget)
    result = widget.automatic.result_layer
    assert isinstance(result.data, zarr.Array) and (tmp_path / "cell_automatic.zarr").is_dir()
    objects = result.data[...]
    assert objects[2].max() >= 1 and not objects[[0, 1, 3]].any(), widget.status.value
    row, col = np.argwhere(objects[2] == objects[2].max())[0]
    left_click(viewer, image.data_to_world((2, row, col)))
    assert widget.automatic.selected.value.endswith(f"({(objects[2] == objects[2].max()).sum()} pixels on this slice)")
    widget.automatic.assign_selected()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data[...] == widget.label_value.value, objects == objects[2].max())
