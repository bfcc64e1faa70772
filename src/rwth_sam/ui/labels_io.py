"""Writing into a user's labels layer: one undoable step, other labels kept unless asked otherwise."""

from __future__ import annotations

import napari
import numpy as np

from ..core.coordinates import SlicePlane, compact_indices
from ..core.labelling import writable


def commit_voxels(
    labels: napari.layers.Labels, indices: tuple[np.ndarray, ...], value: int, overwrite: bool
) -> tuple[int, int]:
    """Write ``value`` at ``indices`` (one index array per axis); returns (voxels written, voxels kept).

    ``data_setitem`` records the change in napari's own history (only the changed voxels), so the
    user's Ctrl+Z undoes it in order with their brush strokes.
    """
    allowed = writable(labels.data[indices], value, overwrite)
    labels.data_setitem(tuple(axis[allowed] for axis in indices), value)
    return int(allowed.sum()), int(allowed.size - allowed.sum())


def commit_mask(
    labels: napari.layers.Labels, plane: SlicePlane, mask: np.ndarray, value: int, overwrite: bool
) -> tuple[int, int]:
    """Write an (H, W) mask on ``plane`` as ``value`` (see ``commit_voxels``)."""
    return commit_voxels(labels, plane.indices(mask), value, overwrite)


def commit_region(labels: napari.layers.Labels, values: np.ndarray, region: np.ndarray) -> int:
    """Replace ``labels`` inside the boolean ``region`` by ``values`` (full-size arrays), undoably.

    Only voxels that change are indexed and stored, so memory follows the change, not the volume.
    """
    changed = region & (labels.data != values)
    indices = compact_indices(np.nonzero(changed), changed.shape)
    labels.data_setitem(indices, values[indices])
    return len(indices[0])
