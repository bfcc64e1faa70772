"""Label volumes with their classes: 3D Slicer segmentations (``.seg.nrrd``: one segment per class, with its
name and colour) and, for formats that cannot hold names (NIfTI, MetaImage, NRRD, TIFF), a class table
written beside the file (``<name>_classes.csv``: value, name, colour), which the reader picks up again.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rwth_sam.core.errors import InputError
from rwth_sam.core.files.geometry import SourceGeometry
from rwth_sam.core.files.medical import (
    Volume,
    file_suffix,
    itk_reason,
    labels_dtype,
    volume_from_image,
    write_image,
)
from rwth_sam.core.labels.profiles import Profile, SegmentationClass

SEGMENTATION_SUFFIX = ".seg.nrrd"
CLASS_TABLE_SUFFIX = "_classes.csv"
_LABEL_NAME = re.compile(r"(^|[^a-z])(seg|segmentation|label|labels|labelmap|mask|masks)([^a-z]|$)", re.IGNORECASE)


def class_table_path(path: str | os.PathLike) -> Path:
    """Where the class table of a labels file goes: ``liver.nii.gz`` → ``liver_classes.csv``."""
    path = Path(path)
    suffix = file_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    return path.with_name(stem + CLASS_TABLE_SUFFIX)


def write_class_table(path: str | os.PathLike, classes: list[SegmentationClass]) -> Path:
    """The class table beside a labels file; returns where it went."""
    table = class_table_path(path)
    partial = table.with_name(f".{table.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["value", "name", "color"])
        writer.writerows([item.value, item.name, item.color] for item in classes)
    os.replace(partial, table)
    return table


def read_class_table(path: str | os.PathLike, name: str) -> Profile | None:
    """The classes written beside a labels file, as a profile called ``name``; None if there is no table."""
    table = class_table_path(path)
    if not table.is_file():
        return None
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        classes = [SegmentationClass(row["name"], int(row["value"]), row["color"]) for row in rows]
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"{table.name}: not a class table with columns value, name, color ({error}).") from error
    return Profile(name, tuple(_unique_names(classes)))


def looks_like_labels(path: str | os.PathLike, dtype: np.dtype) -> bool:
    """Whether a volume file holds labels rather than intensities: a class table beside it, or an integer
    volume named like a segmentation (``*_seg.nii.gz``, ``labels.nrrd``, ``mask.mha``)."""
    if class_table_path(path).is_file():
        return True
    return np.issubdtype(dtype, np.integer) and bool(_LABEL_NAME.search(Path(path).name))


def read_segmentation(path: str | os.PathLike) -> list[tuple[Volume, Profile]]:
    """A 3D Slicer ``.seg.nrrd``: one labels volume per layer of the file (segments that overlap are kept in
    separate layers), each with its segments as a profile (name, label value, colour)."""
    path = Path(path)
    try:
        image = sitk.ReadImage(os.fspath(path))
    except RuntimeError as error:
        raise InputError(f"{path.name} could not be read as a 3D Slicer segmentation ({itk_reason(error)}).") from error
    segments = _segments(image)
    name = path.name[: -len(SEGMENTATION_SUFFIX)]
    layers = image.GetNumberOfComponentsPerPixel()
    results = []
    for layer in range(layers):
        scalar = sitk.VectorIndexSelectionCast(image, layer) if layers > 1 else image
        scalar.CopyInformation(image)
        volume = volume_from_image(
            scalar, path, "3D Slicer segmentation", name if layers == 1 else f"{name} (layer {layer + 1})"
        )
        classes = [item for item_layer, item in segments if item_layer == layer]
        results.append((volume, Profile(volume.name, tuple(_unique_names(classes)))))
    return results


def write_segmentation(path: str | os.PathLike, shown: np.ndarray, geometry: SourceGeometry, profile: Profile):
    """A labels volume as a 3D Slicer segmentation on the source grid: one segment per class of ``profile``
    (values the profile lacks get a segment of their own), named and coloured as there."""
    if geometry.ndim != 3:
        raise InputError("A 3D Slicer segmentation holds a 3D volume; save 2D labels as TIFF.")
    source = np.ascontiguousarray(geometry.to_source(shown))
    boxes = _label_boxes(source)
    metadata = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    named = {item.value for item in profile.classes}
    unnamed = [  # Slicer shows only the values a segment names: the others would be lost on its next save
        SegmentationClass(f"label {value}", value, "#808080") for value in sorted(boxes) if value not in named
    ]
    for index, item in enumerate((*profile.classes, *unnamed)):
        key = f"Segment{index}_"
        box = boxes.get(item.value)
        red, green, blue = (int(item.color[i : i + 2], 16) / 255 for i in (1, 3, 5))
        metadata.update(
            {
                key + "ID": f"Segment_{item.value}",
                key + "Name": item.name,
                key + "NameAutoGenerated": "0",
                key + "Color": f"{red:.6g} {green:.6g} {blue:.6g}",
                key + "ColorAutoGenerated": "0",
                key + "LabelValue": str(item.value),
                key + "Layer": "0",
                key + "Extent": _extent(box),
                key + "Tags": "|",
            }
        )
    dtype = labels_dtype(int(source.max(initial=0)))  # uint16 alone would wrap label values above 65535
    write_image(path, shown.astype(dtype, copy=False), geometry, metadata)


def _label_boxes(source: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Each label value's bounding box in the source array. Large values are compacted first: find_objects
    makes a list as long as the largest value (a profile allows 2**31 - 1)."""
    if not source.any():
        return {}
    if int(source.max()) <= 2**16:
        boxes = ndimage.find_objects(source.astype(np.int64, copy=False))
        return {value: box for value, box in enumerate(boxes, 1) if box is not None}
    values, compact = np.unique(source, return_inverse=True)
    shift = 0 if values[0] == 0 else 1  # find_objects skips 0: the background, or the smallest label
    boxes = ndimage.find_objects(compact.reshape(source.shape) + shift)
    return {int(values[index - shift]): box for index, box in enumerate(boxes, 1) if box is not None}


def _segments(image: sitk.Image) -> list[tuple[int, SegmentationClass]]:
    """(layer, class) for each ``SegmentN_*`` entry of a segmentation's header. Slicer before 4.11 wrote no
    ``Layer`` or ``LabelValue``: a segment per component, each of value 1."""
    keys = set(image.GetMetaDataKeys())
    one_per_component = image.GetNumberOfComponentsPerPixel() > 1 and "Segment0_Layer" not in keys
    segments = []
    index = 0
    while f"Segment{index}_Name" in keys or f"Segment{index}_ID" in keys:
        key = f"Segment{index}_"

        def field(name: str, default: str) -> str:
            return image.GetMetaData(key + name).strip() if key + name in keys else default  # noqa: B023

        try:
            value = int(field("LabelValue", "1" if one_per_component else str(index + 1)))
            layer = int(field("Layer", str(index) if one_per_component else "0"))
            color = "#" + "".join(f"{round(float(c) * 255):02x}" for c in field("Color", "0.5 0.5 0.5").split()[:3])
        except ValueError as error:
            raise InputError(
                f"Segment {index} of the segmentation has an unreadable header entry ({error})."
            ) from error
        name = field("Name", "") or field("ID", f"Segment {index + 1}")
        segments.append((layer, SegmentationClass(name, value, color)))
        index += 1
    return segments


def _unique_names(classes: list[SegmentationClass]) -> list[SegmentationClass]:
    """Profiles need unique class names (ignoring case): a repeated name gets its label value appended."""
    seen: set[str] = set()
    unique = []
    for item in classes:
        name = item.name if item.name.casefold() not in seen else f"{item.name} ({item.value})"
        seen.add(name.casefold())
        unique.append(SegmentationClass(name, item.value, item.color, item.description))
    return unique


def _extent(box: tuple[slice, ...] | None) -> str:
    """A segment's extent as Slicer writes it: ``i0 i1 j0 j1 k0 k1`` in the file's voxel indices (ITK
    order), ``0 -1 0 -1 0 -1`` when empty."""
    if box is None:
        return "0 -1 0 -1 0 -1"
    return " ".join(f"{axis.start} {axis.stop - 1}" for axis in reversed(box))
