"""npe2 reader and writer for medical and CT volumes: NIfTI, NRRD, MetaImage, DICOM series, 3D Slicer
segmentations and HDF5 in; labels layers out, on their image's source grid.

The reader puts the file's geometry in each layer: spacing as ``scale``, the (reoriented) origin as
``translate``, and the source grid in ``metadata[GEOMETRY_KEY]``. The widget's *New labels layer for image*
copies that entry, so *File > Save Selected Layers* writes the labels back onto the source grid, voxel for
voxel, with nothing for the user to set. Files that cannot be opened get a message and no layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import tifffile
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning

from rwth_sam.core.errors import InputError, RwthSamError
from rwth_sam.core.files.geometry import GEOMETRY_KEY, SourceGeometry
from rwth_sam.core.files.hdf5 import HDF5_SUFFIXES, read_hdf5
from rwth_sam.core.files.medical import (
    DICOM_SUFFIXES,
    VOLUME_SUFFIXES,
    Volume,
    file_suffix,
    is_dicom_file,
    labels_dtype,
    read_volume,
    write_image,
    write_nifti_in_slabs,
)
from rwth_sam.core.files.segmentations import (
    SEGMENTATION_SUFFIX,
    looks_like_labels,
    read_class_table,
    read_segmentation,
    write_class_table,
    write_segmentation,
)
from rwth_sam.core.labels.disk_labels import MAX_SLAB, disk_labels_layer, label_values, slabs
from rwth_sam.core.labels.profiles import Profile, SegmentationClass
from rwth_sam.ui.reader import NO_LAYERS, add_profile
from rwth_sam.ui.reporting import as_user_error, show_user_error

Step = Callable[[int, int], None]  # step(done, total)

DICOM_PROBE = 32  # a folder is offered as DICOM when one of its first files is
NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_SUFFIXES = (*NIFTI_SUFFIXES, SEGMENTATION_SUFFIX, ".nrrd", ".mha", ".tif", ".tiff")  # as in napari.yaml
LABELS_FILE_FILTER = ";;".join(
    [f"Labels ({' '.join('*' + suffix for suffix in LABELS_SUFFIXES)})", "3D Slicer segmentation (*.seg.nrrd)"]
)


def get_volume_reader(path):
    """The reader for one volume file, DICOM file or DICOM folder; None for anything else (another
    plugin's turn)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(path)
    if path.is_dir():
        return read_volume_file if _holds_dicom(path) or disk_labels_layer(path) is not None else None
    suffix = file_suffix(path)
    if (
        suffix in VOLUME_SUFFIXES
        or suffix in DICOM_SUFFIXES
        or suffix in HDF5_SUFFIXES
        or suffix == SEGMENTATION_SUFFIX
    ):
        return read_volume_file
    return None


def read_volume_file(path, volume: int | None = None) -> list[tuple]:
    """The layers of one file or DICOM folder; bad input is told and opens nothing."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    try:
        return volume_layers(path, volume)
    except Exception as error:  # noqa: BLE001  (every failure is a message, never napari's traceback)
        show_user_error(error, f"Opening {path.name}")
        return NO_LAYERS


def volume_layers(path: Path, volume: int | None = None) -> list[tuple]:
    """The layer data tuples for ``path``; raises InputError for a file that cannot be opened."""
    disk_labels = disk_labels_layer(path) if path.is_dir() else None
    if disk_labels is not None:  # labels the widget kept on disk: go on with them
        array, meta = disk_labels
        return [(array, meta, "labels")]
    suffix = file_suffix(path)
    if suffix in HDF5_SUFFIXES:
        return _hdf5_layers(path)
    if suffix == SEGMENTATION_SUFFIX:
        layers = []
        for labels, profile in read_segmentation(path):
            layers.append(_labels_layer(labels, profile))
        return layers
    image = read_volume(path, volume)
    for note in image.notes:
        show_warning(note)
    if path.is_file() and looks_like_labels(path, image.data.dtype):
        return [_labels_layer(image, read_class_table(path, image.name))]
    meta = _layer_meta(image)
    if image.window is not None:
        meta["contrast_limits"] = image.window  # the scanner's window: what the radiologist saw
    return [(image.data, meta, "image")]


class LabelsNotSaved(RwthSamError):
    """Labels that cannot be saved as asked. Not a ValueError (as InputError is): napari takes a ValueError
    from a writer for "no writer found", drops its message and warns that no plugin could write the layer."""


def write_labels(path: str, data, meta: dict, step: Step | None = None) -> list[str]:
    """Write a labels layer: NIfTI, NRRD, MetaImage or 3D Slicer segmentation on its image's source grid, or
    TIFF; a class table goes beside the formats that cannot hold class names. TIFF, and NIfTI of labels on
    disk, are written slab by slab, ``step(done, total)`` following their slices (the other formats are
    written whole, at once)."""
    path = Path(path)
    try:
        return _write_labels(path, data, meta, step)
    except ValueError as error:
        raise LabelsNotSaved(str(as_user_error(error, f"Saving {path.name}"))) from error


def _write_labels(path: Path, data, meta: dict, step: Step | None) -> list[str]:
    suffix = file_suffix(path)
    on_disk = not isinstance(data, np.ndarray)
    nifti_in_slabs = on_disk and suffix in NIFTI_SUFFIXES and data.ndim == 3
    if suffix in (".tif", ".tiff") or nifti_in_slabs or not on_disk:
        shown = data  # TIFF and NIfTI of labels on disk are written slab by slab: they need not fit in memory
    else:  # SimpleITK writes a whole array
        _check_fits_in_memory(data, path)
        shown = np.asarray(data)
    geometry = SourceGeometry.from_metadata(meta.get("metadata"))
    if geometry is None:
        ndim = shown.ndim
        geometry = SourceGeometry.from_layer(
            shown.shape, meta.get("scale", (1.0,) * ndim), meta.get("translate", (0.0,) * ndim)
        )
    if tuple(shown.shape) != geometry.display_shape:
        raise InputError(
            f"The labels layer has shape {tuple(shown.shape)}, but the image it was made for "
            f"({Path(geometry.source).name}) has {geometry.display_shape}; it cannot be saved on that grid."
        )
    profile = layer_profile(meta, shown)
    written = [path]
    if suffix == SEGMENTATION_SUFFIX:
        write_segmentation(path, shown, geometry, profile)
        return [os.fspath(path)]
    dtype = labels_dtype(max((item.value for item in profile.classes), default=0))
    if suffix in (".tif", ".tiff"):
        _write_tiff(path, shown, dtype, step)
    elif nifti_in_slabs:
        write_nifti_in_slabs(path, shown, geometry, dtype, MAX_SLAB, step)
    else:
        write_image(path, shown.astype(dtype, copy=False), geometry)
    if any(item.name != _unnamed(item.value) for item in profile.classes):
        written.append(write_class_table(path, list(profile.classes)))
    return [os.fspath(item) for item in written]


def default_labels_path(labels) -> Path:
    """Where a labels layer is offered to be saved: beside its image's source file, in the same format
    (``ct.nii.gz`` → ``ct_labels.nii.gz``; a DICOM series → NIfTI, HDF5 → TIFF), else as TIFF in the
    current folder."""
    geometry = SourceGeometry.from_metadata(labels.metadata)
    name = "_".join(labels.name.split())
    if geometry is None or not geometry.source:
        return Path.cwd() / f"{name}.tif"
    source = Path(geometry.source)
    suffix = file_suffix(source)
    if suffix not in LABELS_SUFFIXES:
        suffix = {".mhd": ".mha", ".nhdr": ".nrrd"}.get(suffix, ".tif" if suffix in HDF5_SUFFIXES else ".nii.gz")
    folder = source if source.is_dir() else source.parent
    return folder / f"{name}{suffix}"


def layer_profile(meta: dict, data: np.ndarray) -> Profile:
    """The classes of a labels layer: the names in its features (as the widget's profile sets them) and the
    colours it draws them in, plus an unnamed class for every other value in the data."""
    features = meta.get("features")
    names: dict[int, str] = {}
    if features is not None and {"index", "class"} <= set(getattr(features, "columns", ())):
        names = {int(index): str(name) for index, name in zip(features["index"], features["class"]) if index}
    values = sorted(set(names) | label_values(data))
    colormap = meta.get("colormap")
    classes = [SegmentationClass(names.get(value, _unnamed(value)), value, _hex(colormap, value)) for value in values]
    return Profile(meta.get("name") or "labels", tuple(classes))


def _unnamed(value: int) -> str:
    return f"label {value}"


def _hex(colormap, value: int) -> str:
    if colormap is None:
        return "#808080"
    rgba = np.asarray(colormap.map(np.array([value])))[0]
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])


def _check_fits_in_memory(data, path: Path) -> None:
    """Refuse, before reading it, labels on disk that a whole-array format would need in memory: running
    out of memory would end napari and everything not yet saved."""
    if isinstance(data, np.ndarray):
        return
    needed = int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize * 2  # read, then converted
    available = psutil.virtual_memory().available
    if needed > available / 2:
        raise LabelsNotSaved(
            f"The labels are {needed / 2**30 / 2:.1f} GB and {file_suffix(path)} is written whole from memory "
            f"({available / 2**30:.1f} GB free): save them as .tif or .nii.gz, which are written slab by slab. "
            "They are on disk already, in their .zarr folder."
        )


def _write_tiff(path: Path, data, dtype: np.dtype, step: Step | None = None) -> None:
    """A TIFF of the labels, one page per slice, written as each slab of slices is read (a slab is whole
    chunks of labels on disk, each read once)."""
    if data.ndim == 2:
        pages = iter([np.asarray(data).astype(dtype, copy=False)])
    else:
        pages = (page.astype(dtype, copy=False) for slab in _slabs_followed(data, step) for page in slab)
    partial = path.with_name(f".{path.name}.partial")
    try:
        tifffile.imwrite(
            partial, data=pages, shape=tuple(data.shape), dtype=dtype, compression="zlib", photometric="minisblack"
        )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if step is not None:
        slices = data.shape[0] if data.ndim == 3 else 1
        step(slices, slices)


def _slabs_followed(data, step: Step | None):
    """``slabs(data)``, telling ``step`` the slices done before each one is read."""
    done = 0
    for slab in slabs(data):
        if step is not None:
            step(done, data.shape[0])
        yield slab
        done += len(slab)


def _layer_meta(volume: Volume) -> dict:
    geometry = volume.geometry
    return {
        "name": volume.name,
        "scale": geometry.scale,
        "translate": geometry.translate,
        "metadata": {GEOMETRY_KEY: geometry.to_metadata()},
    }


def _labels_layer(volume: Volume, profile: Profile | None) -> tuple:
    meta = _layer_meta(volume)
    data = volume.data if np.issubdtype(volume.data.dtype, np.integer) else volume.data.astype(np.int32)
    if profile is not None and profile.classes:
        meta["colormap"] = DirectLabelColormap(color_dict=profile.color_dict(unknown="#808080"))
        meta["features"] = profile.features()
        add_profile(profile, Path(volume.geometry.source).name)
    return (data, meta, "labels")


def _hdf5_layers(path: Path) -> list[tuple]:
    datasets = read_hdf5(path)
    layers = []
    for index, dataset in enumerate(datasets):
        name = f"{path.stem}{dataset.name}" if len(datasets) > 1 else path.stem
        ndim = dataset.data.ndim
        geometry = SourceGeometry.from_layer(dataset.data.shape, (1.0,) * ndim, (0.0,) * ndim, os.fspath(path), "HDF5")
        metadata = {GEOMETRY_KEY: geometry.to_metadata(), "hdf5_dataset": dataset.name}
        meta = {"name": name, "visible": index == 0, "metadata": metadata}
        layers.append((dataset.data, meta, "image"))
    if len(datasets) > 1:
        listed = ", ".join(f"{item.name} {tuple(item.data.shape)}" for item in datasets)
        show_info(
            f"{path.name} holds {len(datasets)} image datasets, each opened as a layer (read only as shown): "
            f"{listed}. Pick the one to segment in the widget's Image list; remove the others if you like."
        )
    return layers


def _holds_dicom(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            files = [entry.path for entry in entries if entry.is_file()]
    except OSError:
        return False
    return any(is_dicom_file(file) for file in sorted(files)[:DICOM_PROBE])
