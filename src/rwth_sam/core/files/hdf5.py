"""HDF5 and NeXus files (synchrotron tomography: ``.h5``, ``.hdf5``, ``.nxs``), read lazily with h5py and dask.

A file may hold several image datasets (a tomogram with its dark and flat fields, or reconstructions of
several scans): each becomes a lazy array, so opening costs no reading until a slice is shown, and the user
picks the one to segment in the widget. A NeXus file's default plot (its ``default`` and ``signal``
attributes) comes first, then the others by size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import h5py
import numpy as np

from rwth_sam.core.errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
MIN_IMAGE_SIDE = 8  # a table of (N, 3) positions or angles is no image


@dataclass
class Dataset:
    """One image dataset of an HDF5 file: its path inside the file and a lazy array of it."""

    name: str
    data: da.Array


def read_hdf5(path: str | os.PathLike) -> list[Dataset]:
    """The 2D and 3D numeric datasets of an HDF5 file, lazily (the file stays open, read-only, while they
    are used). Raises InputError for a file that is not HDF5 or holds no image."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(
            f"{path.name} could not be read as HDF5: it may be truncated or not an HDF5 file ({error})."
        ) from error
    found: list[h5py.Dataset] = []
    skipped: list[str] = []

    def collect(_name, item):
        if isinstance(item, h5py.Dataset) and item.ndim >= 2 and np.issubdtype(item.dtype, np.number):
            if item.ndim > 3:
                skipped.append(f"{item.name} {item.shape}")
            elif min(item.shape[-2:]) >= MIN_IMAGE_SIDE and (item.ndim == 2 or item.shape[0] > 1):
                found.append(item)

    try:
        handle.visititems(collect)
        if not found:
            more = f" ({len(skipped)} of more than 3 dimensions: {', '.join(skipped)})" if skipped else ""
            raise InputError(f"{path.name} holds no 2D or 3D numeric dataset{more}.")
        default = _nexus_default(handle)
    except BaseException:
        handle.close()
        raise
    found.sort(key=lambda item: (item.name != default, -item.size))
    return [Dataset(item.name, da.from_array(item, chunks=_slice_chunks(item), lock=True)) for item in found]


def _slice_chunks(dataset: h5py.Dataset) -> tuple[int, ...]:
    """Read whole slices at a time (the file's own chunks if it has them), so a click reads one slice."""
    if dataset.chunks is not None:
        return dataset.chunks
    return (1,) * (dataset.ndim - 2) + tuple(dataset.shape[-2:])


def _nexus_default(handle: h5py.File) -> str | None:
    """The dataset a NeXus file names as its default plot (root ``default`` → NXentry ``default`` → NXdata
    ``signal``), if it does."""
    group = handle
    for _ in range(2):
        name = _text(group.attrs.get("default"))
        if not name or name not in group:
            break
        group = group[name]
    signal = _text(group.attrs.get("signal")) if isinstance(group, h5py.Group) else None
    if signal and signal in group and isinstance(group[signal], h5py.Dataset):
        return group[signal].name
    return None


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.item())
    return value if isinstance(value, str) else None
