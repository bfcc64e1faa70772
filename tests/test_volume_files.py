"""Volume files with their geometry (``rwth_sam.core.files``), Qt-free: every file is written here by an
independent library (nibabel, SimpleITK, pydicom, h5py) and what rwth-sam writes is read back by one.

The volumes encode their own source voxel index (value = i + 100 j + 10000 k, ITK order), so each shown
voxel says where it came from: its napari world position (translate + scale * index) is compared with the
physical point the independent library gives that source voxel, and labels drawn on the shown array are
checked to land on exactly the source voxels they were drawn on.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from rwth_sam.core.errors import InputError
from rwth_sam.core.files.geometry import SourceGeometry
from rwth_sam.core.files.hdf5 import read_hdf5
from rwth_sam.core.files.medical import labels_dtype, read_volume, write_image, write_nifti_in_slabs
from rwth_sam.core.files.segmentations import (
    class_table_path,
    looks_like_labels,
    read_class_table,
    read_segmentation,
    write_class_table,
    write_segmentation,
)
from rwth_sam.core.labels.profiles import Profile, SegmentationClass

from conftest import write_dicom_series

try:
    from pydicom.pixels.encoders import RLELosslessEncoder  # pydicom 3
except ImportError:  # pydicom 2.4
    from pydicom.encoders import RLELosslessEncoder

SIZE = (5, 6, 4)  # ITK order (x, y, z): every axis a different length, so a swapped axis shows
SPACING = (0.7, 0.8, 2.5)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
TOLERANCE = 1e-4  # mm; NIfTI keeps its quaternion and pixdim in float32


# ----------------------------------------------------------------------------- volumes that say where they are
def index_coded(size=SIZE) -> np.ndarray:
    """A volume (numpy order) whose voxel at ITK index (i, j, k) holds i + 100 j + 10000 k."""
    k, j, i = np.indices(size[::-1])
    return (i + 100 * j + 10000 * k).astype(np.int32)


def source_index(values) -> np.ndarray:
    """The ITK index (i, j, k) that ``index_coded`` values encode, on a last axis of 3."""
    values = np.asarray(values, np.int64)
    return np.stack([values % 100, values // 100 % 100, values // 10000 % 10], axis=-1)


def region_labels(index: np.ndarray) -> np.ndarray:
    """Labels known in source index terms: a block of 1s and a lone 2 in a corner (which a flip would move)."""
    i, j, k = np.moveaxis(index, -1, 0)
    labels = np.where((1 <= i) & (i <= 2) & (2 <= j) & (j <= 4) & (k == 1), 1, 0).astype(np.uint8)
    labels[(i == 4) & (j == 0) & (k == 3)] = 2
    return labels


def assert_at_true_positions(volume, to_lps: Callable[[np.ndarray], np.ndarray]) -> None:
    """Every shown voxel, placed by the layer's scale and translate, sits where the independent library puts
    the source voxel it came from (napari's world order is (z, y, x), LPS's is (x, y, z))."""
    shown_index = np.indices(volume.data.shape).reshape(volume.data.ndim, -1).T
    expected = to_lps(source_index(volume.data.reshape(-1)))[:, ::-1]
    world = np.asarray(volume.geometry.translate) + np.asarray(volume.geometry.scale) * shown_index
    np.testing.assert_allclose(world, expected, atol=TOLERANCE)


def sitk_points(image: sitk.Image) -> Callable[[np.ndarray], np.ndarray]:
    def to_lps(index: np.ndarray) -> np.ndarray:
        return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in row]) for row in index])

    return to_lps


def nifti_points(affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def to_lps(index: np.ndarray) -> np.ndarray:
        ras = affine[:3, :3] @ index.T + affine[:3, 3:]
        return (LPS_FROM_RAS @ ras).T

    return to_lps


@dataclass
class SourceFile:
    """A volume file written by an independent library, and how that library reads labels written on it."""

    path: Path
    to_lps: Callable[[np.ndarray], np.ndarray]
    written_labels: Callable[[Path], np.ndarray]  # the labels rwth-sam wrote (numpy order), the grid checked


def nifti_file(folder: Path, affine: np.ndarray, name: str = "scan.nii.gz") -> SourceFile:
    path = folder / name
    nib.save(nib.Nifti1Image(index_coded().T, affine), path)  # nibabel's arrays are in ITK order (i, j, k)

    def written_labels(written: Path) -> np.ndarray:
        image = nib.load(written)
        np.testing.assert_allclose(image.affine, affine, atol=TOLERANCE)
        return np.asarray(image.dataobj).T

    return SourceFile(path, nifti_points(affine), written_labels)


def sitk_file(folder: Path, name: str, direction, origin=(5.0, -7.0, 12.0), spacing=SPACING) -> SourceFile:
    image = sitk.GetImageFromArray(index_coded())
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    path = folder / name
    sitk.WriteImage(image, path, useCompression=True)

    def written_labels(written: Path) -> np.ndarray:
        back = sitk.ReadImage(written)
        np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=TOLERANCE)
        np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=TOLERANCE)
        np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=TOLERANCE)
        return sitk.GetArrayFromImage(back)

    return SourceFile(path, sitk_points(image), written_labels)


def affine(columns, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A NIfTI affine (RAS) from the three voxel axes' steps."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(columns, float).T
    matrix[:3, 3] = origin
    return matrix


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    plane = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[np.ix_(plane, plane)] = [[c, -s], [s, c]]
    return matrix


# id -> (how to write it, whether it is shown in its own voxel order)
AXIS_ALIGNED = {
    "NIfTI RAS": (lambda folder: nifti_file(folder, affine(np.diag(SPACING))), False),
    "NIfTI LPS": (lambda folder: nifti_file(folder, affine(np.diag([-0.7, -0.8, 2.5]))), True),
    "NIfTI flipped": (lambda folder: nifti_file(folder, affine(np.diag([0.7, -0.8, -2.5]))), False),
    "NIfTI permuted": (
        lambda folder: nifti_file(folder, affine([[0, 0.7, 0], [0, 0, 0.8], [-2.5, 0, 0]]), "scan.nii"),
        False,
    ),
    "NRRD": (lambda folder: sitk_file(folder, "scan.nrrd", [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]), False),
    "MetaImage": (lambda folder: sitk_file(folder, "scan.mha", [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]), False),
}


def assert_labels_go_back(volume, source: SourceFile, folder: Path, name: str) -> None:
    """Labels marked on the shown array, saved with write_image, are on the source voxels they were marked on."""
    shown_labels = region_labels(source_index(volume.data))
    assert shown_labels.sum() == 2 * 3 + 2, "the region must be on the shown array"
    written = folder / name
    write_image(written, shown_labels, volume.geometry)
    np.testing.assert_array_equal(source.written_labels(written), region_labels(source_index(index_coded())))
    assert sorted(p.name for p in folder.iterdir() if "partial" in p.name) == []


# ----------------------------------------------------------------------------- 1. geometry round trips
@pytest.mark.parametrize("case", list(AXIS_ALIGNED))
def test_axis_aligned_volume_is_shown_at_its_physical_position(case, tmp_path):
    write, own_order = AXIS_ALIGNED[case]
    source = write(tmp_path)
    volume = read_volume(source.path)
    assert volume.data.shape == volume.geometry.display_shape and sorted(volume.data.shape) == sorted(SIZE)
    assert volume.geometry.reoriented is not own_order
    assert volume.geometry.oblique_degrees < 1e-6 and volume.notes == []
    assert_at_true_positions(volume, source.to_lps)
    # SimpleITK's own reorientation to LPS gives the same array on the same grid
    oriented = sitk.DICOMOrient(sitk.ReadImage(source.path), "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(oriented), volume.data)
    np.testing.assert_allclose(oriented.GetSpacing()[::-1], volume.geometry.scale, atol=TOLERANCE)
    np.testing.assert_allclose(oriented.GetOrigin()[::-1], volume.geometry.translate, atol=TOLERANCE)
    suffix = ".nii.gz" if "NIfTI" in case else source.path.suffix
    assert_labels_go_back(volume, source, tmp_path, "labels" + suffix)


@pytest.mark.parametrize("case", ["NIfTI", "NRRD"])
def test_oblique_volume_is_reported_and_its_labels_go_back_exactly(case, tmp_path):
    tilt = rotation(0, 10.0) @ rotation(2, 4.0)  # about 10.8° off the nearest axis
    if case == "NIfTI":
        source = nifti_file(tmp_path, affine((tilt @ np.diag([0.7, -0.8, 2.5])).T))  # columns: the voxel axes
    else:
        source = sitk_file(tmp_path, "scan.nrrd", tilt @ np.diag([1.0, 1.0, -1.0]))
    volume = read_volume(source.path)
    geometry = volume.geometry
    # each voxel axis's angle to the world axis nearest to it; the largest is how oblique the scan is
    expected_degrees = np.degrees(np.arccos(np.abs(tilt).max(axis=0))).max()
    assert 10.0 < expected_degrees < 11.0
    assert geometry.oblique_degrees == pytest.approx(expected_degrees, abs=1e-3)
    (note,) = volume.notes
    assert f"oblique by {expected_degrees:.1f}°" in note and "labels are still saved" in note
    assert "oblique" in geometry.to_metadata()["orientation"]
    # napari shows no rotation, but the first shown voxel is where it is, and each axis has its own spacing
    first = source.to_lps(source_index(volume.data.reshape(-1)[:1]))[0]
    np.testing.assert_allclose(geometry.translate, first[::-1], atol=TOLERANCE)
    np.testing.assert_allclose(sorted(geometry.scale), sorted(SPACING), atol=TOLERANCE)
    assert_labels_go_back(volume, source, tmp_path, "labels.nii.gz" if case == "NIfTI" else "labels.nrrd")


def test_labels_written_in_another_format_keep_the_grid(tmp_path):
    """A NIfTI scan's labels saved as NRRD: the same physical grid (SimpleITK sees both in LPS)."""
    source = nifti_file(tmp_path, affine([[0, 0.7, 0], [0, 0, -0.8], [2.5, 0, 0]]))
    volume = read_volume(source.path)
    write_image(tmp_path / "labels.nrrd", region_labels(source_index(volume.data)), volume.geometry)
    scan, labels = sitk.ReadImage(source.path), sitk.ReadImage(tmp_path / "labels.nrrd")
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(labels, get)(), getattr(scan, get)(), atol=TOLERANCE)
    expected = region_labels(source_index(sitk.GetArrayFromImage(scan)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)


def signed_permutations(ndim: int = 3):
    for order in itertools.permutations(range(ndim)):
        for signs in np.ndindex(*(2,) * ndim):
            matrix = np.zeros((ndim, ndim))
            for column, row in enumerate(order):
                matrix[row, column] = -1.0 if signs[column] else 1.0
            yield matrix


def test_reorientation_matches_simpleitk_dicomorient_for_every_axis_aligned_direction():
    array = index_coded()
    directions = list(signed_permutations())
    assert len(directions) == 48
    for direction in directions:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin((3.0, -4.0, 5.0))
        image.SetDirection(direction.ravel().tolist())
        geometry = SourceGeometry.from_grid(image.GetSize(), SPACING, image.GetOrigin(), image.GetDirection())
        oriented = sitk.DICOMOrient(image, "LPS")
        where = f"direction {direction.tolist()}"
        np.testing.assert_allclose(oriented.GetDirection(), np.eye(3).ravel(), err_msg=where)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(oriented), geometry.to_display(array), err_msg=where)
        np.testing.assert_allclose(oriented.GetSpacing()[::-1], geometry.scale, err_msg=where)
        np.testing.assert_allclose(oriented.GetOrigin()[::-1], geometry.translate, atol=1e-9, err_msg=where)
        np.testing.assert_allclose(geometry.display_direction, np.eye(3), err_msg=where)
        assert geometry.display_shape == oriented.GetSize()[::-1]
        shown = geometry.to_display(array)
        np.testing.assert_array_equal(geometry.to_source(shown), array, err_msg=where)
        assert SourceGeometry.from_metadata({"rwth_sam_source": geometry.to_metadata()}) == geometry


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_written_slab_by_slab_is_the_file_simpleitk_writes_for_every_axis_aligned_direction(tmp_path, suffix):
    """Labels that need not fit in memory are streamed into NIfTI; ITK reads back what it reads of its own
    file of the same labels: voxels on the source grid, spacing, origin and direction."""
    labels = (index_coded() % 251).astype(np.uint8)
    for number, direction in enumerate(signed_permutations()):
        geometry = SourceGeometry.from_grid(SIZE, SPACING, (3.0, -4.0, 5.0), direction.ravel())
        shown = geometry.to_display(labels)
        where = f"direction {direction.tolist()}"
        ours, theirs = tmp_path / f"ours{number}{suffix}", tmp_path / f"theirs{number}{suffix}"
        steps = []
        one_slice = SIZE[0] * SIZE[1]
        write_nifti_in_slabs(ours, shown, geometry, np.uint8, one_slice, lambda *step: steps.append(step))
        write_image(theirs, np.ascontiguousarray(shown), geometry)
        assert steps == [(k, SIZE[2]) for k in range(SIZE[2])] + [(SIZE[2], SIZE[2])], where
        mine, reference = sitk.ReadImage(str(ours)), sitk.ReadImage(str(theirs))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mine), labels, err_msg=where)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), labels, err_msg=where)
        for read in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(mine, read)(), getattr(reference, read)(), atol=1e-6, err_msg=where)
        np.testing.assert_allclose(nib.load(ours).affine, nib.load(theirs).affine, atol=1e-6, err_msg=where)
    assert not list(tmp_path.glob(".*partial*")), "no partial file is left behind"


def test_2d_image_is_shown_at_its_physical_position(tmp_path):
    image = sitk.GetImageFromArray(index_coded((5, 6, 1))[0])
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((4.0, -3.0))
    image.SetDirection((0.0, -1.0, -1.0, 0.0))
    sitk.WriteImage(image, tmp_path / "slice.mha")
    volume = read_volume(tmp_path / "slice.mha")
    assert volume.data.shape == (5, 6) and volume.geometry.reoriented

    def to_point(index):
        return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in row[:2]]) for row in index])

    assert_at_true_positions(volume, to_point)
    write_image(tmp_path / "labels.mha", (volume.data == 302).astype(np.uint8), volume.geometry)
    back = sitk.ReadImage(tmp_path / "labels.mha")
    assert back.GetDirection() == image.GetDirection() and back.GetOrigin() == image.GetOrigin()
    np.testing.assert_array_equal(np.argwhere(sitk.GetArrayFromImage(back)), [[3, 2]])  # j = 3, i = 2


# ----------------------------------------------------------------------------- 2. DICOM series
CT_SHAPE = (4, 20, 24)  # (z, y, x); GDCM's JPEG 2000 encoder crashes the process on slices under 8 pixels


def hounsfield(shape=CT_SHAPE) -> np.ndarray:
    """Physical values, multiples of slope 2 from intercept -1024, that encode their voxel: -1024 + 2 n,
    n = i + 32 j + 1024 k."""
    k, j, i = np.indices(shape)
    return (-1024 + 2 * (i + 32 * j + 1024 * k)).astype(np.int16)


def hounsfield_index(values) -> np.ndarray:
    n = (np.asarray(values, np.int64) + 1024) // 2
    return np.stack([n % 32, n // 32 % 32, n // 1024], axis=-1)


def transfer_syntax(path: Path) -> pydicom.uid.UID:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def assert_ct_series(volume, hu: np.ndarray) -> None:
    np.testing.assert_array_equal(volume.data, hu)
    np.testing.assert_allclose(volume.geometry.scale, (2.5, 0.8, 0.7), atol=TOLERANCE)
    np.testing.assert_allclose(volume.geometry.translate, (40.0, -90.0, -120.0), atol=TOLERANCE)
    assert volume.geometry.file_format == "DICOM series" and volume.name == "CT test series"
    assert volume.notes == []


@pytest.mark.parametrize("compression", [None, "JPEG2000"], ids=["uncompressed", "JPEG 2000"])
def test_dicom_series_gives_hounsfield_values_on_its_grid(compression, tmp_path):
    hu = hounsfield()
    files = write_dicom_series(tmp_path / "ct", hu, slope=2, intercept=-1024, compression=compression)
    header = pydicom.dcmread(files[1], stop_before_pixels=True)
    assert (float(header.RescaleSlope), float(header.RescaleIntercept)) == (2.0, -1024.0)
    if compression:
        assert transfer_syntax(files[1]) == pydicom.uid.JPEG2000Lossless
    else:
        assert not transfer_syntax(files[1]).is_compressed
    assert_ct_series(read_volume(tmp_path / "ct"), hu)
    assert_ct_series(read_volume(files[2]), hu)  # any one file opens its whole series


def test_rle_compressed_dicom_series(tmp_path):
    if not RLELosslessEncoder.is_available:
        pytest.skip(f"pydicom's RLE Lossless encoder is not available ({RLELosslessEncoder.missing_dependencies})")
    hu = hounsfield()
    files = write_dicom_series(tmp_path / "ct", hu, slope=2, intercept=-1024)
    for file in files:
        dataset = pydicom.dcmread(file)
        dataset.compress(pydicom.uid.RLELossless)
        dataset.save_as(file)
    assert transfer_syntax(files[0]) == pydicom.uid.RLELossless and transfer_syntax(files[0]).is_compressed
    assert_ct_series(read_volume(tmp_path / "ct"), hu)
    assert_ct_series(read_volume(files[-1]), hu)


def test_sagittal_dicom_series_is_shown_at_its_physical_position(tmp_path):
    direction = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # rows along +P, columns along -S, slices along -L
    hu = hounsfield()
    write_dicom_series(tmp_path / "sagittal", hu, origin=(60.0, -90.0, 80.0), direction=direction)
    volume = read_volume(tmp_path / "sagittal")
    reference = sitk.GetImageFromArray(hu)
    reference.SetSpacing(SPACING)
    reference.SetOrigin((60.0, -90.0, 80.0))
    reference.SetDirection([float(v) for v in direction])
    assert volume.geometry.reoriented
    shown_index = np.indices(volume.data.shape).reshape(3, -1).T
    expected = sitk_points(reference)(hounsfield_index(volume.data.reshape(-1)))[:, ::-1]
    world = np.asarray(volume.geometry.translate) + np.asarray(volume.geometry.scale) * shown_index
    np.testing.assert_allclose(world, expected, atol=1e-3)  # DICOM writes positions as decimal strings


# ----------------------------------------------------------------------------- 3. bad input
def test_truncated_nifti_is_refused(tmp_path):
    for name in ("scan.nii", "scan.nii.gz"):
        nib.save(
            nib.Nifti1Image(np.arange(20 * 30 * 40, dtype=np.int16).reshape(20, 30, 40), np.eye(4)), tmp_path / name
        )
        whole = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
        with pytest.raises(InputError, match="is truncated") as caught:
            read_volume(tmp_path / name)
        assert name in str(caught.value) and "Copy or download it again" in str(caught.value)


def test_complete_nifti_with_trailing_bytes_opens(tmp_path):
    """The size check counts what the header needs; extra bytes after the voxels are no reason to refuse."""
    source = nifti_file(tmp_path, affine(np.diag(SPACING)), "scan.nii")
    source.path.write_bytes(source.path.read_bytes() + b"\0" * 16)
    np.testing.assert_array_equal(np.sort(read_volume(source.path).data, axis=None), np.sort(index_coded(), axis=None))


@pytest.mark.parametrize(
    ("name", "content", "format_name"),
    [
        ("scan.nii.gz", np.random.default_rng(1).bytes(3000), "NIfTI"),
        ("scan.nrrd", np.random.default_rng(2).bytes(3000), "NRRD"),
        ("scan.mha", np.random.default_rng(3).bytes(3000), "MetaImage"),
        ("notes.nii", b"this is a text file, not an image\n" * 20, "NIfTI"),
    ],
    ids=["corrupt .nii.gz", "corrupt .nrrd", "corrupt .mha", "text named .nii"],
)
def test_file_that_is_not_its_format_is_refused(name, content, format_name, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_volume(tmp_path / name)
    message = str(caught.value)
    assert message.startswith(f"{name} could not be read as {format_name}")
    assert f"not a {format_name} file" in message


def test_truncated_nrrd_and_metaimage_name_the_reason(tmp_path):
    image = sitk.GetImageFromArray(np.arange(20 * 30 * 40, dtype=np.int16).reshape(20, 30, 40))
    for name, reason in (("scan.nrrd", "fread got only"), ("scan.mha", "File cannot be read")):
        sitk.WriteImage(image, tmp_path / name)
        whole = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
        with pytest.raises(InputError, match="it may be truncated") as caught:
            read_volume(tmp_path / name)
        assert reason in str(caught.value)
        assert "No such file" not in str(caught.value) and "(0x" not in str(caught.value)


def test_sheared_nifti_is_refused_with_the_reason(tmp_path):
    """NIfTI allows a sheared affine; ITK does not, and the message says so rather than 'truncated'."""
    nifti_file(tmp_path, affine([[0.7, 0, 0], [0.3, 0.8, 0], [0, 0, 2.5]]))
    with pytest.raises(InputError, match="scan.nii.gz has a sheared voxel grid .* resample it") as caught:
        read_volume(tmp_path / "scan.nii.gz")
    assert "truncated" not in str(caught.value)


def test_missing_path_is_refused(tmp_path):
    for name in ("gone.nii.gz", "gone.dcm", "gone_folder"):
        with pytest.raises(InputError, match=f"{name}: there is no such file or folder"):
            read_volume(tmp_path / name)


def test_unknown_suffix_is_refused(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"photo.png: not a NIfTI, NRRD, MetaImage or DICOM file"):
        read_volume(tmp_path / "photo.png")


def series_beside_others(folder: Path, name: str, hu: np.ndarray, **options) -> list[Path]:
    """A DICOM series written into a folder that holds others: its files named after it."""
    written = write_dicom_series(folder / f".{name}", hu, **options)
    files = [file.rename(folder / f"{name}_{file.name}") for file in written]
    (folder / f".{name}").rmdir()
    return files


def test_folder_with_two_series_lists_them_and_one_file_opens_its_series(tmp_path):
    soft, bone = hounsfield(), hounsfield() + 2000
    series_beside_others(tmp_path, "a", soft, description="CT soft tissue", series_uid="1.2.826.0.1.3680043.8.498.1")
    bone_files = series_beside_others(
        tmp_path, "b", bone, description="CT bone", series_uid="1.2.826.0.1.3680043.8.498.2"
    )
    with pytest.raises(InputError) as caught:
        read_volume(tmp_path)
    message = str(caught.value)
    assert "holds 2 DICOM series" in message and "open one of its files" in message
    assert "'CT soft tissue', 4 files" in message and "'CT bone', 4 files" in message
    opened = read_volume(bone_files[1])
    np.testing.assert_array_equal(opened.data, bone)
    assert opened.name == "CT bone"


def test_missing_slice_opens_with_a_note_of_the_gap(tmp_path):
    hu = hounsfield((5, 20, 24))
    files = write_dicom_series(tmp_path / "ct", hu)  # slices at z = 40, 42.5, 45, 47.5, 50
    files[2].unlink()
    volume = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(volume.data, hu[[0, 1, 3, 4]])
    assert len(volume.notes) == 1
    note = volume.notes[0]
    assert note.startswith("DICOM series 'CT test series': slices missing or unevenly spaced (usual gap 2.5 mm)")
    assert "42.50 → 47.50 mm" in note and "distances across these gaps are wrong" in note
    assert volume.geometry.translate[0] == pytest.approx(40.0)


def test_unevenly_spaced_slices_open_with_a_note_of_where(tmp_path):
    hu = hounsfield((5, 20, 24))
    files = write_dicom_series(tmp_path / "ct", hu)
    moved = pydicom.dcmread(files[3])
    moved.ImagePositionPatient = [-120.0, -90.0, 48.3]  # was 47.5
    moved.save_as(files[3])
    volume = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(volume.data, hu)
    (note,) = volume.notes
    assert "unevenly spaced (usual gap 2.5 mm)" in note
    assert "45.00 → 48.30 mm, 48.30 → 50.00 mm" in note and "40.00 →" not in note


def test_evenly_spaced_series_has_no_note_even_in_descending_order(tmp_path):
    hu = hounsfield()
    write_dicom_series(tmp_path / "ct", hu, direction=(1, 0, 0, 0, -1, 0, 0, 0, -1), origin=(0.0, 0.0, 0.0))
    volume = read_volume(tmp_path / "ct")
    assert volume.notes == []
    np.testing.assert_array_equal(volume.data, hu[::-1, ::-1])  # reoriented: y and z flipped


def test_slices_of_different_sizes_are_refused(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.77"
    series_beside_others(tmp_path, "a", hounsfield((4, 20, 24)), series_uid=uid)
    series_beside_others(tmp_path, "b", hounsfield((2, 16, 24)), series_uid=uid, origin=(-120.0, -90.0, 50.0))
    with pytest.raises(InputError, match="slices of different sizes") as caught:
        read_volume(tmp_path)
    assert "4 of 24×20, 2 of 24×16" in str(caught.value) and "cannot be one volume" in str(caught.value)


def write_4d_nifti(path: Path, volumes: int = 3) -> np.ndarray:
    matrix = affine([[0, 0.7, 0], [0, 0, 0.8], [-2.5, 0, 0]])
    data = np.stack([index_coded().T + 100_000 * t for t in range(volumes)], axis=-1).astype(np.int32)
    nib.save(nib.Nifti1Image(data, matrix), path)
    return matrix


def test_4d_nifti_needs_a_volume_number(tmp_path):
    path = tmp_path / "perfusion.nii.gz"
    matrix = write_4d_nifti(path)
    with pytest.raises(InputError) as caught:
        read_volume(path)
    message = str(caught.value)
    assert "perfusion.nii.gz is 4D: 3 volumes of 5 × 6 × 4 voxels" in message
    assert "--volume N (N from 0 to 2)" in message
    volume = read_volume(path, volume=2)
    assert set(np.unique(volume.data // 100_000)) == {2}
    volume.data = volume.data % 100_000
    assert_at_true_positions(volume, nifti_points(matrix))
    for wrong in (3, -1):
        with pytest.raises(InputError, match=f"has volumes 0 to 2; there is no volume {wrong}"):
            read_volume(path, volume=wrong)


def test_3d_file_has_no_second_volume(tmp_path):
    source = nifti_file(tmp_path, affine(np.diag(SPACING)))
    np.testing.assert_array_equal(read_volume(source.path, volume=0).data, read_volume(source.path).data)
    with pytest.raises(InputError, match="holds one volume; there is no volume 1"):
        read_volume(source.path, volume=1)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no DICOM series found in"):
        read_volume(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "notes" / "fake.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(InputError, match="no DICOM series found"):
        read_volume(tmp_path / "notes")
    with pytest.raises(InputError, match="fake.dcm: no DICOM series found"):
        read_volume(tmp_path / "notes" / "fake.dcm")


@pytest.mark.parametrize("name", ["colour.nrrd", "colour.mha", "colour.nii"])
def test_vector_image_is_refused(name, tmp_path):
    if name.endswith(".nii"):
        rgb = np.zeros(SIZE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / name)
    else:
        sitk.WriteImage(sitk.Image(list(SIZE), sitk.sitkVectorUInt8, 3), tmp_path / name)
    with pytest.raises(InputError, match=f"{name} has 3 values per voxel .* segments scalar images"):
        read_volume(tmp_path / name)


def test_write_image_refuses_a_detached_header_and_leaves_nothing(tmp_path):
    geometry = SourceGeometry.from_layer((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for suffix, instead in ((".mhd", ".mha"), (".nhdr", ".nrrd")):
        with pytest.raises(InputError, match=f"Save labels as {instead} .* rather than {suffix}"):
            write_image(tmp_path / f"labels{suffix}", np.zeros((2, 3, 4), np.uint8), geometry)
    assert list(tmp_path.iterdir()) == []


def test_labels_dtype_is_the_smallest_that_holds_the_values():
    dtypes = [labels_dtype(value) for value in (0, 255, 256, 65535, 65536, 2**32 - 1)]
    assert dtypes == [np.uint8, np.uint8, np.uint16, np.uint16, np.uint32, np.uint32]
    with pytest.raises(InputError, match="too large to save"):
        labels_dtype(2**32)


# ----------------------------------------------------------------------------- 4. HDF5
@pytest.fixture
def h5_reads(monkeypatch) -> list[int]:
    """The number of voxels each h5py dataset read returns, as it happens."""
    reads = []
    original = h5py.Dataset.__getitem__

    def counted(self, key, *args, **kwargs):
        result = original(self, key, *args, **kwargs)
        reads.append(int(np.size(result)))
        return result

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    return reads


def test_hdf5_volume_is_read_lazily_one_slice_at_a_time(tmp_path, h5_reads):
    volume = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    with h5py.File(tmp_path / "tomo.h5", "w") as handle:
        handle["reconstruction"] = volume  # contiguous: no chunks of its own
    (dataset,) = read_hdf5(tmp_path / "tomo.h5")
    assert dataset.name == "/reconstruction" and isinstance(dataset.data, da.Array)
    assert sum(h5_reads) == 0, "opening read voxels"
    assert dataset.data.chunks == ((1,) * 10, (12,), (14,))
    np.testing.assert_array_equal(dataset.data[4].compute(), volume[4])
    assert sum(h5_reads) == 12 * 14, "showing one slice read more than that slice"
    np.testing.assert_array_equal(dataset.data.compute(), volume)


def test_hdf5_chunked_dataset_is_read_in_its_own_chunks(tmp_path):
    volume = np.arange(8 * 12 * 14, dtype=np.uint16).reshape(8, 12, 14)
    with h5py.File(tmp_path / "tomo.h5", "w") as handle:
        handle.create_dataset("volume", data=volume, chunks=(2, 6, 7), compression="gzip")
    (dataset,) = read_hdf5(tmp_path / "tomo.h5")
    assert dataset.data.chunks == ((2,) * 4, (6, 6), (7, 7))
    np.testing.assert_array_equal(dataset.data[3, 5:9].compute(), volume[3, 5:9])


def write_nexus(path: Path, as_bytes: bool) -> dict[str, np.ndarray]:
    def text(value: str):
        return np.bytes_(value) if as_bytes else value

    rng = np.random.default_rng(0)
    arrays = {
        "/entry/data/tomo": rng.random((6, 8, 8)).astype(np.float32),
        "/entry/instrument/detector/dark": rng.integers(0, 100, (10, 8, 8), dtype=np.uint16),
        "/entry/instrument/detector/flat": rng.random((8, 8)),
    }
    with h5py.File(path, "w") as handle:
        handle.attrs["default"] = text("entry")
        entry = handle.create_group("entry")
        entry.attrs["NX_class"], entry.attrs["default"] = text("NXentry"), text("data")
        for name, array in arrays.items():
            handle[name] = array
        handle["entry/data"].attrs["NX_class"], handle["entry/data"].attrs["signal"] = text("NXdata"), text("tomo")
        handle["entry/data/rotation_angle"] = np.linspace(0, 180, 6)  # 1D: no image
        handle["entry/data/single"] = np.zeros((1, 8, 8))  # one-pixel-thick 3D: no volume
        handle["entry/instrument/detector/frames"] = np.zeros((2, 3, 8, 8))  # 4D: not opened
        handle["entry/title"] = "scan 17"
    return arrays


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str attributes", "bytes attributes"])
def test_hdf5_lists_its_datasets_with_the_nexus_default_first(as_bytes, tmp_path):
    arrays = write_nexus(tmp_path / "scan.nxs", as_bytes)
    datasets = read_hdf5(tmp_path / "scan.nxs")
    assert [item.name for item in datasets] == [
        "/entry/data/tomo",  # the default plot, though smaller than the dark field
        "/entry/instrument/detector/dark",
        "/entry/instrument/detector/flat",
    ]
    for item in datasets:
        np.testing.assert_array_equal(item.data.compute(), arrays[item.name])


def test_hdf5_without_the_nexus_default_lists_the_largest_first(tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle["small"] = np.zeros((3, 8, 9))
        handle["group/large"] = np.zeros((6, 9, 10))
        handle["image"] = np.zeros((30, 30))
        handle["positions"] = np.zeros((500, 3))  # a table, not an image
    assert [item.name for item in read_hdf5(tmp_path / "plain.h5")] == ["/image", "/group/large", "/small"]


def test_hdf5_without_an_image_is_refused(tmp_path):
    with h5py.File(tmp_path / "log.h5", "w") as handle:
        handle["angles"] = np.arange(10.0)
        handle["title"] = "no image"
        handle["mask"] = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match=r"^log.h5 holds no 2D or 3D numeric dataset\.$"):
        read_hdf5(tmp_path / "log.h5")
    with h5py.File(tmp_path / "frames.h5", "w") as handle:
        handle["frames"] = np.zeros((2, 3, 4, 5))
    with pytest.raises(InputError, match=r"more than 3 dimensions: /frames \(2, 3, 4, 5\)"):
        read_hdf5(tmp_path / "frames.h5")


def test_non_hdf5_file_named_h5_is_refused(tmp_path):
    (tmp_path / "fake.h5").write_bytes(b"not an HDF5 file at all\n" * 40)
    with pytest.raises(InputError, match="fake.h5 could not be read as HDF5: it may be truncated or not an HDF5 file"):
        read_hdf5(tmp_path / "fake.h5")


# ----------------------------------------------------------------------------- 5. 3D Slicer segmentations
ORGANS = Profile(
    "organs",
    (
        SegmentationClass("liver", 1, "#ff0000"),
        SegmentationClass("spleen", 2, "#00ff80"),
        SegmentationClass("kidney", 5, "#123456"),  # no voxel: an empty segment
    ),
)


def header_field(image: sitk.Image, key: str) -> str:
    assert image.HasMetaDataKey(key), f"no {key} in the header"
    return image.GetMetaData(key).strip()


def test_segmentation_is_written_as_slicer_writes_it(tmp_path):
    source = sitk_file(tmp_path, "scan.nrrd", [[0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    volume = read_volume(source.path)
    index = source_index(volume.data)
    shown = region_labels(index)
    shown[(index[..., 0] == 0) & (index[..., 1] == 5) & (index[..., 2] == 0)] = 7  # a value the profile lacks
    write_segmentation(tmp_path / "organs.seg.nrrd", shown, volume.geometry, ORGANS)

    written = sitk.ReadImage(tmp_path / "organs.seg.nrrd")
    scan = sitk.ReadImage(source.path)
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, get)(), getattr(scan, get)(), atol=TOLERANCE)
    assert written.GetPixelID() == sitk.sitkUInt8
    expected = region_labels(source_index(index_coded()))
    expected[0, 5, 0] = 7
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
    assert header_field(written, "NRRD_space") == "left-posterior-superior"
    assert header_field(written, "Segmentation_MasterRepresentation") == "Binary labelmap"
    segments = [
        # name, colour (0-1), label value, extent (ITK index order: i0 i1 j0 j1 k0 k1)
        ("liver", (1.0, 0.0, 0.0), "1", "1 2 2 4 1 1"),
        ("spleen", (0.0, 1.0, 128 / 255), "2", "4 4 0 0 3 3"),
        ("kidney", (0x12 / 255, 0x34 / 255, 0x56 / 255), "5", "0 -1 0 -1 0 -1"),
        ("label 7", (128 / 255,) * 3, "7", "0 0 5 5 0 0"),
    ]
    for number, (name, color, value, extent) in enumerate(segments):
        key = f"Segment{number}_"
        assert header_field(written, key + "Name") == name
        colour = [float(c) for c in header_field(written, key + "Color").split()]
        np.testing.assert_allclose(colour, color, atol=1e-5)
        assert all(0.0 <= c <= 1.0 for c in colour)
        assert header_field(written, key + "LabelValue") == value
        assert header_field(written, key + "Layer") == "0"
        assert header_field(written, key + "Extent") == extent
    assert not written.HasMetaDataKey("Segment4_Name")

    ((labels, profile),) = read_segmentation(tmp_path / "organs.seg.nrrd")
    np.testing.assert_array_equal(labels.data, shown)
    np.testing.assert_allclose(labels.geometry.scale, volume.geometry.scale)
    np.testing.assert_allclose(labels.geometry.translate, volume.geometry.translate, atol=TOLERANCE)
    assert labels.name == "organs" and profile.name == "organs"
    assert [(item.name, item.value, item.color) for item in profile.classes] == [
        ("liver", 1, "#ff0000"),
        ("spleen", 2, "#00ff80"),
        ("kidney", 5, "#123456"),
        ("label 7", 7, "#808080"),
    ]


def test_segmentation_keeps_label_values_above_65535(tmp_path):
    geometry = SourceGeometry.from_grid(SIZE, SPACING, (0.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]).ravel())
    shown = np.zeros(geometry.display_shape, np.uint32)
    shown[1, 2, 3] = 70_000
    shown[3, 0:2, 0] = 3
    profile = Profile("big", (SegmentationClass("vessel", 70_000, "#0000ff"),))
    write_segmentation(tmp_path / "big.seg.nrrd", shown, geometry, profile)
    written = sitk.ReadImage(tmp_path / "big.seg.nrrd")
    assert written.GetPixelID() == sitk.sitkUInt32
    # shown x runs backwards (the direction's -1): shown x 3 is source i = 5 - 1 - 3 = 1
    assert header_field(written, "Segment0_Extent") == "1 1 2 2 1 1"
    assert header_field(written, "Segment1_Name") == "label 3"
    assert header_field(written, "Segment1_Extent") == "4 4 0 1 3 3"
    ((labels, read_profile),) = read_segmentation(tmp_path / "big.seg.nrrd")
    np.testing.assert_array_equal(labels.data, shown)
    assert [item.value for item in read_profile.classes] == [70_000, 3]


def labelled_points(image_or_volume, array: np.ndarray | None = None) -> np.ndarray:
    """The physical points (z, y, x) of a labels array's non-zero voxels, sorted: from a SimpleITK image and
    its array, or from a shown volume by its scale and translate."""
    if array is None:
        geometry = image_or_volume.geometry
        shown = np.argwhere(image_or_volume.data)
        points = np.asarray(geometry.translate) + np.asarray(geometry.scale) * shown
    else:
        points = sitk_points(image_or_volume)(np.argwhere(array)[:, ::-1])[:, ::-1]
    return points[np.lexsort(points.T[::-1])]


def two_layer_segmentation(path: Path, kind: str, slicer_4_11: bool) -> tuple[sitk.Image, list[np.ndarray]]:
    """A segmentation with overlapping segments, one per layer (a 4D NRRD). ``slicer_4_11``: with the
    ``Layer`` and ``LabelValue`` entries Slicer writes since 4.11; without them, as earlier versions wrote it."""
    tumour = np.zeros(SIZE[::-1], np.uint8)
    tumour[1:3, 2:5, 1:3] = 1
    vessel = np.zeros(SIZE[::-1], np.uint8)
    vessel[2, 0:6, 2] = 1  # crosses the tumour: Slicer keeps overlapping segments in separate layers
    image = sitk.GetImageFromArray(np.stack([tumour, vessel], axis=-1), isVector=True)
    image.SetSpacing(SPACING)
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    for number, (name, color) in enumerate((("tumour", "1 0 0"), ("vessel", "0 0 1"))):
        for field, value in (("ID", f"Segment_{number + 1}"), ("Name", name), ("Color", color)):
            image.SetMetaData(f"Segment{number}_{field}", value)
        if slicer_4_11:
            image.SetMetaData(f"Segment{number}_Layer", str(number))
            image.SetMetaData(f"Segment{number}_LabelValue", "1")
    sitk.WriteImage(image, path)
    if kind == "list":
        text = path.read_bytes()
        assert b"kinds: vector domain domain domain\n" in text
        path.write_bytes(text.replace(b"kinds: vector domain", b"kinds: list domain", 1))
    return image, [tumour, vessel]


@pytest.mark.parametrize(
    ("kind", "slicer_4_11"),
    [("vector", True), ("list", True), ("list", False)],
    ids=["SimpleITK's vector kind", "Slicer's list kind", "Slicer before 4.11"],
)
def test_segmentation_with_two_layers_gives_two_volumes(kind, slicer_4_11, tmp_path):
    path = tmp_path / "lesions.seg.nrrd"
    image, arrays = two_layer_segmentation(path, kind, slicer_4_11)
    layers = read_segmentation(path)
    assert [volume.name for volume, _ in layers] == ["lesions (layer 1)", "lesions (layer 2)"]
    assert [[(c.name, c.value, c.color) for c in profile.classes] for _, profile in layers] == [
        [("tumour", 1, "#ff0000")],
        [("vessel", 1, "#0000ff")],
    ]
    for (volume, _), layer in zip(layers, arrays):
        assert volume.data.sum() == layer.sum()
        np.testing.assert_allclose(labelled_points(volume), labelled_points(image, layer), atol=TOLERANCE)


def test_unreadable_segmentation_is_refused(tmp_path):
    (tmp_path / "broken.seg.nrrd").write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    with pytest.raises(InputError, match="broken.seg.nrrd could not be read as a 3D Slicer segmentation"):
        read_segmentation(tmp_path / "broken.seg.nrrd")


def test_segmentation_of_2d_labels_is_refused(tmp_path):
    geometry = SourceGeometry.from_layer((4, 5), (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(InputError, match="holds a 3D volume; save 2D labels as TIFF"):
        write_segmentation(tmp_path / "flat.seg.nrrd", np.zeros((4, 5), np.uint8), geometry, ORGANS)


# ----------------------------------------------------------------------------- class tables
def test_class_table_path_is_named_after_the_labels_file(tmp_path):
    assert class_table_path(tmp_path / "liver.nii.gz") == tmp_path / "liver_classes.csv"
    assert class_table_path(tmp_path / "ct.seg.nrrd") == tmp_path / "ct_classes.csv"
    assert class_table_path(tmp_path / "scan.v2.mha") == tmp_path / "scan.v2_classes.csv"
    assert class_table_path("labels.NRRD") == Path("labels_classes.csv")


def test_class_table_round_trip(tmp_path):
    classes = [
        SegmentationClass("Leber, links", 1, "#FF0000"),
        SegmentationClass('the "big" vessel', 3, "#00ff00"),
        SegmentationClass("Niere ü", 700, "#0a0b0c"),
    ]
    labels = tmp_path / "organs.nii.gz"
    assert read_class_table(labels, "organs") is None
    table = write_class_table(labels, classes)
    assert table == tmp_path / "organs_classes.csv"
    assert table.read_text(encoding="utf-8").splitlines()[0] == "value,name,color"
    assert [p.name for p in tmp_path.iterdir()] == ["organs_classes.csv"]  # no partial file left
    profile = read_class_table(labels, "organs")
    assert profile.name == "organs"
    assert list(profile.classes) == classes


def test_class_table_with_repeated_names_and_bad_tables(tmp_path):
    labels = tmp_path / "labels.nrrd"
    class_table_path(labels).write_text("value,name,color\n1,bone,#ffffff\n2,Bone,#eeeeee\n", encoding="utf-8")
    assert [item.name for item in read_class_table(labels, "x").classes] == ["bone", "Bone (2)"]
    for text in ("value,label\n1,bone\n", "value,name,color\none,bone,#ffffff\n", "value,name,color\n1,bone,red\n"):
        class_table_path(labels).write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match="labels_classes.csv: not a class table with columns value, name, color"):
            read_class_table(labels, "x")


def test_looks_like_labels(tmp_path):
    integer, floating = np.dtype(np.uint8), np.dtype(np.float32)
    for name in ("liver_seg.nii.gz", "labels.nrrd", "mask.mha", "case1-segmentation.nii", "CT.Labelmap.nrrd"):
        assert looks_like_labels(tmp_path / name, integer), name
    for name in ("ct.nii.gz", "message.nii", "casing.mha", "liverseg.nii.gz"):
        assert not looks_like_labels(tmp_path / name, integer), name
    assert not looks_like_labels(tmp_path / "labels.nrrd", floating)
    write_class_table(tmp_path / "ct.nii.gz", [SegmentationClass("bone", 1, "#ffffff")])
    assert looks_like_labels(tmp_path / "ct.nii.gz", floating)


def test_files_package_imports_neither_qt_nor_napari():
    """The readers and writers are core: a script or another tool uses them without a GUI."""
    code = (
        "import sys, rwth_sam.core.files.medical, rwth_sam.core.files.segmentations, rwth_sam.core.files.hdf5; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PySide6')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
