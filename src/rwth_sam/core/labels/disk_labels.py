"""Labels that need not fit in memory: a zarr array on disk, written chunk by chunk as results come in.

A whole-volume uint32 labels array is 4 bytes a voxel (52 GB for a 2560³ scan). Above a size the user
sets, *New labels layer for image* makes the labels a zarr folder instead: napari shows it slice by
slice, and submits, propagations, undo and the brush read and write only the chunks they touch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import platformdirs
import zarr

from rwth_sam.core.errors import InputError

LABELS_DTYPE = np.dtype(np.uint32)
DISK_LABELS_SUFFIX = ".zarr"
LAYER_ATTRIBUTE = "rwth_sam_labels_layer"
MAX_SLAB = 2**25  # voxels read at a time when a whole disk array is scanned (128 MB of uint32)


def labels_bytes(shape: tuple[int, ...]) -> int:
    """What a labels array of ``shape`` would take in memory."""
    return int(np.prod(shape, dtype=np.int64)) * LABELS_DTYPE.itemsize


def default_labels_folder() -> Path:
    """Where disk labels go when the image came from no file (or its folder cannot be written)."""
    return Path(platformdirs.user_data_dir("rwth-sam")) / "labels"


def disk_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of a few MB that a slice along any axis crosses cheaply: 8 deep, 256 × 256 across."""
    wanted = (8,) * (len(shape) - 2) + (256, 256)
    return tuple(min(size, chunk) for size, chunk in zip(shape, wanted))


def free_labels_path(folder: str | os.PathLike, name: str) -> Path:
    """``<folder>/<name>.zarr``, or with ``-2``, ``-3``… appended: never an existing folder."""
    folder = Path(folder)
    stem = "_".join(name.split()) or "labels"
    path = folder / f"{stem}{DISK_LABELS_SUFFIX}"
    number = 1
    while path.exists():
        number += 1
        path = folder / f"{stem}-{number}{DISK_LABELS_SUFFIX}"
    return path


def create_disk_labels(path: str | os.PathLike, shape: tuple[int, ...], layer: dict) -> zarr.Array:
    """A new, empty zarr labels array at ``path``; ``layer`` (its napari name, scale, translate and
    metadata, JSON-friendly) is kept in its attributes, so that opening the folder again gives the same
    labels layer. Empty chunks are not stored: it costs nothing on disk until labels are written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = zarr.open_array(
            path, mode="w-", shape=shape, chunks=disk_chunks(shape), dtype=LABELS_DTYPE, fill_value=0
        )
    except (OSError, FileExistsError) as error:
        raise InputError(f"Cannot make the labels folder {path}: {error}.") from error
    array.attrs[LAYER_ATTRIBUTE] = layer
    return array


def disk_labels_layer(path: str | os.PathLike) -> tuple[zarr.Array, dict] | None:
    """Labels made by ``create_disk_labels``, opened to go on with (read and write), and their layer
    settings; None for any other folder."""
    try:
        array = zarr.open_array(Path(path), mode="r+")
    except Exception:  # noqa: BLE001  (not a zarr array: zarr raises several kinds)
        return None
    layer = array.attrs.get(LAYER_ATTRIBUTE)
    return (array, dict(layer)) if isinstance(layer, dict) else None


def writable_folder(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def slabs(labels):
    """A whole array, or a disk one slab by slab along its first axis (memory of one slab, not the volume)."""
    if isinstance(labels, np.ndarray) or labels.ndim < 3:
        yield np.asarray(labels)
        return
    depth = max(1, MAX_SLAB // max(1, int(np.prod(labels.shape[1:]))))
    chunk = (getattr(labels, "chunks", None) or (1,))[0]
    if isinstance(chunk, int) and depth > chunk:
        depth -= depth % chunk  # whole chunks: each is read once
    for start in range(0, labels.shape[0], depth):
        yield np.asarray(labels[start : start + depth])


def largest_value(labels) -> int:
    """The largest label value (of a disk array, read slab by slab)."""
    return max(int(np.max(slab, initial=0)) for slab in slabs(labels))


def label_values(labels) -> set[int]:
    """The label values in use, 0 left out (of a disk array, read slab by slab)."""
    values: set[int] = set()
    for slab in slabs(labels):
        values.update(int(value) for value in np.unique(slab) if value)
    return values
