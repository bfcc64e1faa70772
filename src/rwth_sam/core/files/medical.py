"""Medical and CT volume files through SimpleITK: NIfTI, NRRD, MetaImage and DICOM series (GDCM decodes the
compressed transfer syntaxes: JPEG 2000, JPEG lossless, JPEG-LS, RLE), read with their geometry and written
back onto the source grid.

Intensities stay physical: GDCM applies a DICOM series' rescale slope and intercept (Hounsfield units for
CT), and the pixel type is the file's.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.openers import Opener

from rwth_sam.core.errors import InputError
from rwth_sam.core.files.geometry import SourceGeometry

# suffix (lower case) -> the format's name, for messages and the layer's metadata
VOLUME_SUFFIXES = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SPACING_TOLERANCE = 0.01  # a slice gap that differs from the usual one by more than this fraction is reported


@dataclass
class Volume:
    """An image read from a file: the array as shown (numpy order, reoriented), its geometry, and what the
    user should know about it (``notes``, shown as warnings); ``window``: the (low, high) display window the
    file suggests (a DICOM series' WindowCenter/WindowWidth), if any."""

    data: np.ndarray
    geometry: SourceGeometry
    name: str
    notes: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None


@dataclass(frozen=True)
class DicomSeries:
    uid: str
    files: tuple[str, ...]
    description: str

    def describe(self) -> str:
        label = f"'{self.description}'" if self.description else "(no description)"
        return f"{label}, {len(self.files)} files, e.g. {Path(self.files[0]).name} (series {self.uid})"


def file_suffix(path: str | os.PathLike) -> str:
    """The suffix that names the format, with ``.gz`` and ``.seg`` kept: ``.nii.gz``, ``.seg.nrrd``."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file: 'DICM' after its 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_series_in(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series in a folder (not its subfolders), each with its files in slice order."""
    folder = os.fspath(folder)
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
        series.append(DicomSeries(uid, tuple(files), _tags(files[0], "0008|103e")[0]))
    return series


def read_volume(path: str | os.PathLike, volume: int | None = None) -> Volume:
    """A NIfTI, NRRD or MetaImage file, a DICOM series (its folder or any of its files), shown reoriented.

    A 4D file needs ``volume`` (which of its volumes to open). Raises InputError, with what to do, for
    anything that cannot be opened as one 2D or 3D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: there is no such file or folder.")
    if path.is_dir() or file_suffix(path) in DICOM_SUFFIXES or (path.is_file() and is_dicom_file(path)):
        return read_dicom_series(path)
    file_format = VOLUME_SUFFIXES.get(file_suffix(path))
    if file_format is None:
        raise InputError(f"{path.name}: not a NIfTI, NRRD, MetaImage or DICOM file.")
    image = _read_image(path, file_format)
    image = _one_volume(image, path.name, volume)
    return volume_from_image(image, path, file_format)


def read_dicom_series(path: Path) -> Volume:
    """A folder with one DICOM series, or the series that a file belongs to."""
    folder = path if path.is_dir() else path.parent
    series = dicom_series_in(folder)
    if not series:
        raise InputError(f"{path.name}: no DICOM series found in {folder}.")
    if path.is_dir():
        if len(series) > 1:
            listed = "\n".join(f"- {item.describe()}" for item in series)
            raise InputError(
                f"{path.name} holds {len(series)} DICOM series; open one of its files to pick that series:\n{listed}"
            )
        chosen = series[0]
    else:
        chosen = next((item for item in series if any(Path(f).samefile(path) for f in item.files)), None)
        if chosen is None:
            raise InputError(f"{path.name} is not a readable DICOM image (GDCM finds no series for it).")
    notes = _check_slices(chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{path.name}: the DICOM series could not be read ({itk_reason(error)}).") from error
    described = f"DICOM series '{chosen.description}'" if chosen.description else "DICOM series"
    volume = volume_from_image(image, path, "DICOM series", name=chosen.description or folder.name)
    volume.notes[:0] = [f"{described}: {note}" for note in notes]
    volume.window = _dicom_window(chosen.files[0])
    return volume


def _dicom_window(file: str) -> tuple[float, float] | None:
    """The display window the scanner recorded (the first of WindowCenter/WindowWidth), in the rescaled
    units (Hounsfield for CT), as contrast limits."""
    center, width = _tags(file, "0028|1050", "0028|1051")
    try:
        center, width = float(center.split("\\")[0]), float(width.split("\\")[0])
    except ValueError:
        return None
    return (center - width / 2, center + width / 2) if width > 0 else None


def write_image(path: str | os.PathLike, shown: np.ndarray, geometry: SourceGeometry, metadata: dict | None = None):
    """Write a shown array (labels) on ``geometry``'s source grid, atomically (a temporary file renamed)."""
    path = Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(geometry.to_source(shown)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    suffix = file_suffix(path)
    if suffix in (".mhd", ".nhdr"):  # a header naming a pixel file beside it: a rename would break the link
        raise InputError(f"Save labels as {'.mha' if suffix == '.mhd' else '.nrrd'} (one file) rather than {suffix}.")
    partial = path.with_name(f".{path.name}.partial{suffix}")
    try:
        sitk.WriteImage(image, os.fspath(partial), useCompression=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_nifti_in_slabs(
    path: str | os.PathLike, shown, geometry: SourceGeometry, dtype, max_voxels: int, step=None
) -> None:
    """Write a shown 3D array (labels that need not fit in memory, e.g. on disk) as NIfTI on ``geometry``'s
    source grid: the header, then the voxels a slab of at most ``max_voxels`` at a time, atomically.
    ``step(done, total)`` follows the source slices written. (SimpleITK writes only whole arrays.)"""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in (".nii", ".nii.gz") or geometry.ndim != 3:
        raise InputError(f"Only 3D NIfTI (.nii, .nii.gz) is written slab by slab, not {suffix} of {geometry.ndim}D.")
    header = nibabel.Nifti1Header()
    header.set_data_shape(geometry.size)  # ITK's (x, y, z) is NIfTI's
    header.set_data_dtype(dtype)
    affine = geometry.nifti_affine()
    header.set_qform(affine, code=1)  # scanner coordinates, in both forms, as ITK writes them
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header.set_slope_inter(1.0, 0.0)
    header.set_data_offset(352)  # the header and the (empty) extension flag of a single .nii file
    slices = geometry.source_shape[0]
    depth = max(1, max_voxels // max(1, int(np.prod(geometry.source_shape[1:]))))
    partial = path.with_name(f".{path.name[: -len(suffix)]}.partial{suffix}")  # .gz: the opener compresses
    try:
        with Opener(partial, "wb") as file:
            header.write_to(file)
            for start, stop, slab in geometry.source_slabs(shown, depth):
                if step is not None:
                    step(start, slices)
                file.write(np.ascontiguousarray(slab, dtype=dtype).tobytes())  # C order: x fastest, as NIfTI
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if step is not None:
        step(slices, slices)


def labels_dtype(maximum: int) -> np.dtype:
    """The smallest unsigned type that holds the label values (what 3D Slicer and ITK-SNAP read)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if maximum <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InputError(f"label value {maximum} is too large to save (at most {np.iinfo(np.uint32).max}).")


def _read_image(path: Path, file_format: str) -> sitk.Image:
    try:
        image = sitk.ReadImage(os.fspath(path))
    except RuntimeError as error:
        if "orthonormal direction cosines" in str(error):
            raise InputError(
                f"{path.name} has a sheared voxel grid (its axes are not perpendicular), which ITK cannot "
                "represent; resample it onto a regular grid first."
            ) from error
        raise InputError(
            f"{path.name} could not be read as {file_format}: it may be truncated or not a {file_format} file "
            f"({itk_reason(error)})."
        ) from error
    if file_format == "NIfTI":
        _check_nifti_complete(path)
    return image


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI file without an error, its missing voxels zero. nibabel reads the last
    voxel where the header says it is (for .nii.gz, decompressing the stream to its end), and fails if the
    file ends before."""
    try:
        image = nibabel.load(path)
        image.dataobj[(-1,) * len(image.shape)]
    except (EOFError, ValueError, OSError, zlib.error) as error:
        raise InputError(
            f"{path.name} is truncated: it ends before the voxels its header describes ({error}). "
            "Copy or download it again."
        ) from error


def _one_volume(image: sitk.Image, name: str, volume: int | None) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector or colour volume); "
            "rwth-sam segments scalar images."
        )
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
        if volume is None:
            raise InputError(
                f"{name} is 4D: {count} volumes of {' × '.join(map(str, image.GetSize()[:3]))} voxels. "
                f"Pick one: python -m rwth_sam {name} --volume N (N from 0 to {count - 1})."
            )
        if not 0 <= volume < count:
            raise InputError(f"{name} has volumes 0 to {count - 1}; there is no volume {volume}.")
        size = list(image.GetSize())
        size[3] = 0  # collapse the fourth axis
        return sitk.Extract(image, size, [0, 0, 0, volume])
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{name} is {image.GetDimension()}D; rwth-sam opens 2D and 3D images.")
    if volume not in (None, 0):
        raise InputError(f"{name} holds one volume; there is no volume {volume}.")
    return image


def volume_from_image(image: sitk.Image, path: Path, file_format: str, name: str | None = None) -> Volume:
    """A SimpleITK image as shown: reoriented, with its geometry."""
    geometry = SourceGeometry.from_grid(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), os.fspath(path), file_format
    )
    # one copy, in the shown order: a view of the image's buffer would dangle once the image is freed
    data = np.array(geometry.to_display(sitk.GetArrayViewFromImage(image)), order="C", copy=True)
    notes = []
    if geometry.oblique_degrees > 1e-3:
        notes.append(f"{path.name}: {geometry.describe()}.")
    stem = path.name[: -len(file_suffix(path))] if file_suffix(path) else path.name
    return Volume(data, geometry, name or stem, notes)


def _check_slices(series: DicomSeries) -> list[str]:
    """Refuse a series whose slices differ in size; report missing or unevenly spaced slices by position."""
    slices = [_tags(f, "0028|0010", "0028|0011", "0020|0032", "0020|0037") for f in series.files]
    sizes = Counter((rows, cols) for rows, cols, _, _ in slices)
    if len(sizes) > 1:
        listed = ", ".join(f"{count} of {cols}×{rows}" for (rows, cols), count in sizes.most_common())
        raise InputError(f"The DICOM series has slices of different sizes ({listed}); it cannot be one volume.")
    positions = [_slice_position(position, orientation) for _, _, position, orientation in slices]
    if len(positions) < 3 or any(p is None for p in positions):
        return []
    gaps = np.diff(np.asarray(positions))
    usual = float(np.median(np.abs(gaps)))
    uneven = [i for i, gap in enumerate(gaps) if abs(abs(gap) - usual) > SPACING_TOLERANCE * usual]
    if not uneven:
        return []
    listed = ", ".join(f"{positions[i]:.2f} → {positions[i + 1]:.2f} mm" for i in uneven[:8])
    more = f" and {len(uneven) - 8} more" if len(uneven) > 8 else ""
    return [
        f"slices missing or unevenly spaced (usual gap {usual:.3g} mm) between positions {listed}{more}. "
        "The volume is shown with even spacing, so distances across these gaps are wrong."
    ]


def _slice_position(position: str, orientation: str) -> float | None:
    """A slice's position along the normal of its plane (ImagePositionPatient on the ImageOrientationPatient
    normal), in mm."""
    try:
        origin = np.array([float(v) for v in position.split("\\")])
        row, column = np.array([float(v) for v in orientation.split("\\")]).reshape(2, 3)
    except ValueError:
        return None
    return float(origin @ np.cross(row, column))


def _tags(file: str, *keys: str) -> list[str]:
    """DICOM tags of one file ("gggg|eeee"; "" where absent), reading its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return [reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else "" for key in keys]


def itk_reason(error: RuntimeError) -> str:
    """The last line of an ITK exception: the reason, without the C++ file and line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1] == "Reason: No such file or directory":
        lines.pop()  # MetaImage appends a stale errno to a file it did open (a truncated one)
    reason = lines[-1] if lines else "unknown error"
    reason = reason.removeprefix("ITK ERROR: ").strip()
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)  # "MetaImageIO(0x5652f9463820): " says nothing
