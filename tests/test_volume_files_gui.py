"""Medical volume files through napari: open with the rwth-sam reader, segment with the widget, save with
napari's own *Save Selected Layers* API, and read the result back with an independent library (nibabel for
NIfTI, SimpleITK for the rest): the labels must lie on the source file's grid, voxel for voxel.

Every source file is written by the test, with a bright box at known voxel indices of the file's own grid,
so where the labels must land is known without the plugin's geometry code. The oracle model
(``conftest.OraclePredictor``) answers a click with the true region under it.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from napari.utils.notifications import NotificationSeverity
from npe2 import PluginManager

import rwth_sam
from rwth_sam.core.errors import RwthSamError
from rwth_sam.core.files.geometry import GEOMETRY_KEY
from rwth_sam.core.labels.profile_store import PROFILES

from conftest import ORACLE, dice, messages, write_dicom_series
from napari_helpers import middle_click, run_3d, teach_oracle, wait_idle

nibabel = pytest.importorskip("nibabel")

pytestmark = pytest.mark.gui

BACKGROUND, BRIGHT = -1000, 400  # HU; both are 2n - 1024, so a slope of 2 and intercept of -1024 store them exactly
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])  # NIfTI's RAS+ world and ITK's (DICOM's) LPS+ differ in x and y


@dataclass
class Source:
    """A volume file the test wrote: its voxels and grid in ITK index order (i, j, k), LPS millimetres."""

    path: Path
    voxels: np.ndarray  # indexed [i, j, k]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray  # 3 x 3, column d is the direction of index axis d
    region: np.ndarray  # bool [i, j, k]: the bright box

    def physical(self, ijk) -> np.ndarray:
        """LPS positions of voxel indices (rows of ``ijk``)."""
        ijk = np.atleast_2d(ijk).astype(float)
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def world(self, ijk) -> np.ndarray:
        """Where napari must show voxels: world axes are the physical ones in numpy order (z, y, x)."""
        return self.physical(ijk)[:, ::-1]

    @property
    def ras_affine(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, :3] = LPS_FROM_RAS @ self.direction * self.spacing
        affine[:3, 3] = LPS_FROM_RAS @ self.origin
        return affine


def box_volume(size, box, seed=0):
    """Noise around -1000 HU (even values, every slice different) with a bright box; [i, j, k] order."""
    rng = np.random.default_rng(seed)
    voxels = (BACKGROUND + 2 * rng.integers(0, 100, size)).astype(np.int16)
    region = np.zeros(size, bool)
    region[box] = True
    voxels[region] = BRIGHT
    return voxels, region


SIZE = (17, 13, 9)
BOX = np.s_[3:10, 6:11, 2:5]  # 7 x 5 x 3 voxels, off centre: a flip or a swap moves it


def write_nifti(path: Path, ras_affine, size=SIZE, box=BOX) -> Source:
    """A NIfTI file (nibabel) with the affine in both its qform and sform, as scanners write them."""
    voxels, region = box_volume(size, box)
    image = nibabel.Nifti1Image(voxels, ras_affine)
    image.set_qform(ras_affine, code=1)
    image.set_sform(ras_affine, code=1)
    nibabel.save(image, path)
    matrix = np.asarray(ras_affine, float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    return Source(path, voxels, spacing, LPS_FROM_RAS @ ras_affine[:3, 3], LPS_FROM_RAS @ matrix / spacing, region)


def write_dicom(folder: Path, direction, **options) -> Source:
    voxels, region = box_volume(SIZE, BOX)
    spacing, origin = np.array([0.7, 0.8, 2.5]), np.array([-120.0, -90.0, 40.0])
    files = write_dicom_series(folder, voxels.T, spacing, origin, tuple(np.ravel(direction)), **options)
    if options.get("compression") == "JPEG2000":  # the transfer syntax UID in the file's meta header
        assert b"1.2.840.10008.1.2.4.90" in files[0].read_bytes()[:1024], "the series is not JPEG 2000"
    return Source(folder, voxels, spacing, origin, np.asarray(direction, float), region)


def affine(columns, origin):
    result = np.eye(4)
    result[:3, :3] = np.asarray(columns, float).T  # one row per index axis, given as its RAS vector
    result[:3, 3] = origin
    return result


SOURCES = {
    # name: (how to write it, the suffix the labels are saved with)
    "RAS NIfTI": (lambda tmp: write_nifti(tmp / "ras.nii.gz", affine(np.diag([0.8, 1.1, 2.5]), (-30.5, 12.25, 47.0))), ".nii.gz"),
    "LPS NIfTI": (lambda tmp: write_nifti(tmp / "lps.nii", affine(np.diag([-0.8, -1.1, 2.5]), (30.0, 20.0, -15.0))), ".nii"),
    "flipped NIfTI": (lambda tmp: write_nifti(tmp / "flipped.nii.gz", affine(np.diag([0.9, -1.2, -2.0]), (5.0, 40.0, 60.0))), ".nrrd"),
    "permuted NIfTI": (lambda tmp: write_nifti(tmp / "permuted.nii.gz", affine([(0, 0, 2.0), (0.7, 0, 0), (0, -0.9, 0)], (-11.0, 7.0, -3.0))), ".mha"),
    "DICOM series": (lambda tmp: write_dicom(tmp / "ct_series", np.eye(3)), ".seg.nrrd"),
    "DICOM JPEG 2000, slope 2": (
        lambda tmp: write_dicom(tmp / "ct_j2k", np.diag([1.0, -1.0, -1.0]), slope=2, intercept=-1024, compression="JPEG2000"),
        ".nii.gz",
    ),
}  # fmt: skip


def first_writer(path) -> str:
    """The plugin napari's ``viewer.layers.save`` (no writer chosen) writes a labels layer to ``path`` with."""
    writer, _ = PluginManager.instance().get_writer(str(path), layer_types=["labels"])
    return writer.plugin_name if writer else ""


def check_image_layer(viewer, source: Source):
    """The one layer opened: shown on the file's physical grid, every voxel where the file puts it."""
    assert len(viewer.layers) == 1
    image = viewer.layers[0]
    assert isinstance(image, napari.layers.Image)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in source.voxels.shape])))
    np.testing.assert_allclose(image.translate, source.world(corners).min(axis=0), atol=1e-4)
    along = np.abs(source.direction).argmax(axis=1)  # the index axis that runs along each LPS axis
    np.testing.assert_allclose(image.scale, source.spacing[along][::-1], rtol=1e-5)
    ijk = np.indices(source.voxels.shape).reshape(3, -1).T
    shown = np.round((source.world(ijk) - image.translate) / image.scale).astype(int)
    assert np.array_equal(np.asarray(image.data)[tuple(shown.T)], source.voxels[tuple(ijk.T)])
    recorded = image.metadata[GEOMETRY_KEY]
    assert recorded["size"] == list(source.voxels.shape)
    np.testing.assert_allclose(recorded["spacing"], source.spacing, rtol=1e-5)
    np.testing.assert_allclose(recorded["origin"], source.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(recorded["direction"], (3, 3)), source.direction, atol=1e-6)
    return image


def dock_oracle(viewer, oracle_checkpoint):
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value, widget.checkpoint.value, widget.device.value = ORACLE, oracle_checkpoint, "cpu"
    return widget


def segment_region(viewer, qtbot, widget, image, source: Source):
    """Click the bright box on each shown slice it spans (at its centre voxel's position) and submit."""
    data = np.asarray(image.data)
    teach_oracle(data, data == BRIGHT, 0, rwth_sam.IntensityWindow(*image.contrast_limits))
    inside = np.argwhere(source.region)
    centre = source.world(inside[len(inside) // 2])[0]
    for z in np.unique(np.round(source.world(inside)[:, 0], 4)):
        viewer.dims.set_point(0, z)
        middle_click(viewer, (z, centre[1], centre[2]))
        wait_idle(qtbot, widget)
        widget.submit()


def save_selected(viewer, layer, path: Path) -> list[str]:
    """As File > Save Selected Layers does, with the writer napari picks for the name."""
    viewer.layers.selection = {layer}
    return viewer.layers.save(str(path), selected=True)


def read_back(path: Path):
    """(voxels [i, j, k], RAS affine or None, (spacing, origin, direction) or None) by the independent library."""
    if path.name.endswith((".nii", ".nii.gz")):
        image = nibabel.load(path)
        return np.asarray(image.dataobj), image.affine, None
    image = sitk.ReadImage(str(path))
    grid = np.array(image.GetSpacing()), np.array(image.GetOrigin()), np.reshape(image.GetDirection(), (3, 3))
    return sitk.GetArrayFromImage(image).T, None, grid


@pytest.mark.parametrize("case", list(SOURCES))
def test_a_volume_file_round_trips_through_napari_onto_its_own_grid(viewer, qtbot, tmp_path, oracle_checkpoint, case):
    write, suffix = SOURCES[case]
    source = write(tmp_path)
    assert viewer.open(source.path, plugin="rwth-sam")
    image = check_image_layer(viewer, source)
    widget = dock_oracle(viewer, oracle_checkpoint)
    labels = widget.create_labels_layer()
    assert labels.metadata[GEOMETRY_KEY] == image.metadata[GEOMETRY_KEY]
    widget.label_value.value = 3
    segment_region(viewer, qtbot, widget, image, source)
    assert (np.asarray(labels.data) == 3).sum() == source.region.sum(), "the clicks did not segment the box"

    saved = tmp_path / f"out{suffix}"
    assert first_writer(saved) == "rwth-sam", f"napari picks another writer for {suffix}"
    assert save_selected(viewer, labels, saved) == [str(saved)]
    voxels, ras_affine, grid = read_back(saved)
    if ras_affine is not None:
        np.testing.assert_allclose(ras_affine, source.ras_affine, atol=1e-4)
    else:
        spacing, origin, direction = grid
        np.testing.assert_allclose(spacing, source.spacing, rtol=1e-6)
        np.testing.assert_allclose(origin, source.origin, atol=1e-4)
        np.testing.assert_allclose(direction, source.direction, atol=1e-6)
    assert voxels.shape == source.voxels.shape
    assert np.array_equal(voxels, np.where(source.region, 3, 0)), "the labels are not where the box is in the file"


def test_labels_with_no_file_geometry_keep_the_layer_spacing_and_place(viewer, tmp_path):
    image = viewer.add_image(
        np.zeros((6, 10, 8), np.int16), name="plain", scale=(2.0, 0.5, 0.75), translate=(10.0, -5.0, 3.0)
    )
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    labels = widget.create_labels_layer()
    assert GEOMETRY_KEY not in labels.metadata
    labels.data[2:4, 1:6, 5:7] = 4
    path = tmp_path / "plain_labels.nii.gz"
    assert save_selected(viewer, labels, path) == [str(path)]
    saved = nibabel.load(path)
    np.testing.assert_allclose(saved.header.get_zooms(), (0.75, 0.5, 2.0))
    assert np.array_equal(np.asarray(saved.dataobj), np.asarray(labels.data).T)
    viewer.layers.clear()
    viewer.open(path, plugin="rwth-sam")
    (reopened,) = viewer.layers
    assert isinstance(reopened, napari.layers.Labels)
    np.testing.assert_allclose(reopened.scale, image.scale)
    np.testing.assert_allclose(reopened.translate, image.translate, atol=1e-5)
    assert np.array_equal(reopened.data, labels.data)


def test_tiff_goes_to_napari_unless_rwth_sam_is_named(viewer, tmp_path):
    """napari's own labels writer also claims .tif and comes first; *Files of type* (or ``plugin=``) picks ours."""
    source = write_nifti(tmp_path / "ras.nii.gz", affine(np.diag([0.8, 1.1, 2.5]), (0.0, 0.0, 0.0)))
    viewer.open(source.path, plugin="rwth-sam")
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    labels = widget.create_labels_layer()
    labels.data[2:4, 1:6, 5:7] = 300
    assert first_writer(tmp_path / "labels.tif") == "napari"
    path = tmp_path / "labels.tif"
    viewer.layers.selection = {labels}
    assert viewer.layers.save(str(path), selected=True, plugin="rwth-sam") == [str(path)]
    with tifffile.TiffFile(path) as tiff:
        assert tiff.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        saved = tiff.asarray()
    assert saved.dtype == np.uint16 and np.array_equal(saved, labels.data)


def test_labels_of_another_shape_than_their_source_grid_are_refused(viewer, tmp_path):
    source = write_nifti(tmp_path / "ras.nii.gz", affine(np.diag([0.8, 1.1, 2.5]), (0.0, 0.0, 0.0)))
    viewer.open(source.path, plugin="rwth-sam")
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    labels = widget.create_labels_layer()
    shown = labels.data.shape
    labels.data = np.ones((shown[0], shown[1] - 2, shown[2]), np.uint8)
    path = tmp_path / "cropped.nii.gz"
    with pytest.raises(RwthSamError) as raised:
        save_selected(viewer, labels, path)
    assert str(raised.value) == (
        f"The labels layer has shape {(shown[0], shown[1] - 2, shown[2])}, but the image it was made for (ras.nii.gz) "
        f"has {shown}; it cannot be saved on that grid."
    )
    assert list(tmp_path.iterdir()) == [source.path]


def truncated_nifti(folder: Path) -> Path:
    path = write_nifti(folder / "scan.nii.gz", affine(np.eye(3), (0, 0, 0)), size=(40, 40, 30)).path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def two_dicom_series(folder: Path) -> Path:
    """One folder holding the files of two series (each written apart first: their file names are alike)."""
    target = folder / "two_series"
    target.mkdir()
    for number, name in enumerate(("head", "neck"), 1):
        voxels, _ = box_volume((8, 8, 3), np.s_[2:4, 2:4, 1:2])
        for file in write_dicom_series(folder / name, voxels.T, description=f"{name} CT", series_uid=f"1.2.3.{number}"):
            file.rename(target / f"{name}_{file.name}")
    return target


@pytest.mark.parametrize(
    "make, expected",
    [
        (truncated_nifti, r"scan\.nii\.gz (is|could not be read as NIfTI).* truncated"),
        (two_dicom_series, r"two_series holds 2 DICOM series; open one of its files to pick that series:\n- 'head CT', 3 files, e\.g\. head_slice0000\.dcm \(series 1\.2\.3\.1\)\n- 'neck CT', 3 files, e\.g\. neck_slice0000\.dcm \(series 1\.2\.3\.2\)$"),
    ],
    ids=["truncated NIfTI", "folder with two DICOM series"],
)  # fmt: skip
def test_a_file_that_cannot_be_opened_is_told_and_adds_no_layer(viewer, tmp_path, notifications, make, expected):
    path = make(tmp_path)
    viewer.open(path, plugin="rwth-sam")
    assert len(viewer.layers) == 0
    errors = messages(notifications, NotificationSeverity.ERROR)
    assert len(errors) == 1 and re.match(expected, errors[0]), errors
    assert not messages(notifications, NotificationSeverity.WARNING)


def test_a_class_table_goes_beside_a_nifti_and_names_the_labels_again(
    viewer, qtbot, tmp_path, oracle_checkpoint, profile_store
):
    source = write_nifti(tmp_path / "abdomen.nii.gz", affine(np.diag([0.8, 1.1, 2.5]), (-30.5, 12.25, 47.0)))
    viewer.open(source.path, plugin="rwth-sam")
    image = viewer.layers[0]
    widget = dock_oracle(viewer, oracle_checkpoint)
    labels = widget.create_labels_layer()
    profile = PROFILES.get("Abdominal CT")
    widget.profile.value = profile.name
    widget.classes.value = profile.class_by_name("liver")
    segment_region(viewer, qtbot, widget, image, source)

    path = tmp_path / "abdomen_liver.nii.gz"
    table = tmp_path / "abdomen_liver_classes.csv"
    assert save_selected(viewer, labels, path) == [str(path), str(table)]
    assert np.array_equal(np.asarray(nibabel.load(path).dataobj), np.where(source.region, 5, 0))
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"value": str(item.value), "name": item.name, "color": item.color.lower()} for item in profile.classes
    ]

    viewer.layers.clear()
    viewer.open(path, plugin="rwth-sam")
    (reopened,) = viewer.layers
    assert isinstance(reopened, napari.layers.Labels), "a NIfTI with a class table beside it is labels, not an image"
    assert np.array_equal(reopened.data, labels.data)
    names = dict(zip(reopened.features["index"], reopened.features["class"]))
    assert all(names[item.value] == item.name for item in profile.classes)
    np.testing.assert_allclose(
        reopened.colormap.map(np.array([5]))[0], labels.colormap.map(np.array([5]))[0], atol=1 / 255
    )
    assert [(item.name, item.value) for item in PROFILES.get("abdomen_liver").classes] == [
        (item.name, item.value) for item in profile.classes
    ]


def test_the_liver_of_the_whole_body_ct_is_saved_on_its_grid_as_nifti_and_slicer_segmentation(
    viewer, qtbot, tmp_path, shared_data, oracle_checkpoint, profile_store
):
    """The real CT (RAS NIfTI, shown with x and y flipped): the oracle 3D pipeline over axial slices 85-105,
    saved as .nii.gz and .seg.nrrd, must reproduce the reference liver on the file's own voxel grid."""
    folder = shared_data / "medct_totalseg_wholebody"
    ct_file = nibabel.load(folder / "example_ct.nii.gz")
    truth = np.asarray(nibabel.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)  # [i, j, k]
    viewer.open(folder / "example_ct.nii.gz", plugin="rwth-sam")
    (image,) = viewer.layers

    def shown(voxels):  # RAS [i, j, k] as napari must show it: (z, y, x), LPS, so y and x run backwards
        return voxels.transpose(2, 1, 0)[:, ::-1, ::-1]

    assert np.array_equal(image.data, shown(np.asarray(ct_file.dataobj)))
    # From slice 85 up the liver is one region under its neighbour's box; lower down a detached part widens
    # the box until another organ fills most of it, and the oracle (the box's majority label) answers that.
    start, end, liver = 85, 105, PROFILES.get("Abdominal CT").class_by_name("liver")
    widget, labels, panel = run_3d(
        viewer, qtbot, oracle_checkpoint, image, shown(truth), (0, 1, 2), start, end, ["liver"]
    )
    assert labels.metadata[GEOMETRY_KEY] == image.metadata[GEOMETRY_KEY]
    panel.full.clicked.emit()
    wait_idle(qtbot, widget, timeout=120_000)

    inside = np.zeros(truth.shape, bool)
    inside[:, :, start : end + 1] = True  # axial slices are the file's k
    reference = (truth == liver.value) & inside
    nifti, segmentation = tmp_path / "liver.nii.gz", tmp_path / "liver.seg.nrrd"
    for path in (nifti, segmentation):
        assert first_writer(path) == "rwth-sam"
        assert save_selected(viewer, labels, path)[0] == str(path)
        voxels, ras_affine, grid = read_back(path)
        if ras_affine is not None:
            np.testing.assert_allclose(ras_affine, ct_file.affine, atol=1e-4)
        else:
            spacing, origin, direction = grid
            np.testing.assert_allclose(spacing, ct_file.header.get_zooms(), rtol=1e-6)
            np.testing.assert_allclose(origin, LPS_FROM_RAS @ ct_file.affine[:3, 3], atol=1e-4)
            np.testing.assert_allclose(direction, LPS_FROM_RAS, atol=1e-6)
        assert voxels.shape == truth.shape
        score = dice(voxels == liver.value, reference)
        assert score >= 0.99, f"{path.name}: Dice {score:.4f} against the reference liver"
        assert not voxels[~inside].any(), f"{path.name}: labels outside slices {start}-{end}"

    profile = PROFILES.get("Abdominal CT")
    header = sitk.ReadImage(str(segmentation))
    segments = {}
    for index in itertools.count():
        if not header.HasMetaDataKey(f"Segment{index}_Name"):
            break
        color = [float(c) for c in header.GetMetaData(f"Segment{index}_Color").split()]
        value = int(header.GetMetaData(f"Segment{index}_LabelValue"))
        segments[value] = (
            header.GetMetaData(f"Segment{index}_Name"),
            "#" + "".join(f"{round(c * 255):02x}" for c in color),
        )
    assert segments == {item.value: (item.name, item.color.lower()) for item in profile.classes}

    viewer.layers.clear()
    viewer.open(segmentation, plugin="rwth-sam")
    (reopened,) = viewer.layers
    assert isinstance(reopened, napari.layers.Labels)
    assert np.array_equal(reopened.data, labels.data)
    np.testing.assert_allclose(reopened.scale, image.scale)
    np.testing.assert_allclose(reopened.translate, image.translate, atol=1e-4)
    names = dict(zip(reopened.features["index"], reopened.features["class"]))
    assert all(names[item.value] == item.name for item in profile.classes)
    for item in profile.classes:
        expected = [int(item.color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        np.testing.assert_allclose(reopened.colormap.map(np.array([item.value]))[0][:3], expected, atol=0.5 / 255)
    added = PROFILES.get("liver")
    assert added is not None and [(c.name, c.value, c.color.lower()) for c in added.classes] == [
        (c.name, c.value, c.color.lower()) for c in profile.classes
    ]


def test_a_dicom_series_opens_in_the_window_its_scanner_recorded(viewer, tmp_path):
    hounsfield = np.full((3, 20, 24), -1000, np.int16)
    hounsfield[:, 5:15, 6:18] = 40
    write_dicom_series(tmp_path / "windowed", hounsfield, window=(40, 400))
    write_dicom_series(tmp_path / "plain", hounsfield)
    [windowed] = viewer.open(tmp_path / "windowed", plugin="rwth-sam")
    [plain] = viewer.open(tmp_path / "plain", plugin="rwth-sam")
    assert tuple(windowed.contrast_limits) == (-160, 240), "soft tissue, as the scanner's tags say"
    assert tuple(plain.contrast_limits) == (-1000, 40), "no tags: napari's own range"
