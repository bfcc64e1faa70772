"""Writing into a user's labels layer: one undoable step, other labels kept unless asked otherwise."""

from __future__ import annotations

import napari
import numpy as np

from ..core.coordinates import SlicePlane
from ..core.labelling import writable_pixels


def commit_mask(
    labels: napari.layers.Labels, plane: SlicePlane, mask: np.ndarray, value: int, overwrite: bool
) -> tuple[int, int]:
    """Write an (H, W) slice mask as ``value``; returns (pixels written, pixels of other labels kept).

    ``data_setitem`` records the change in napari's own history (only the changed voxels), so the
    user's Ctrl+Z undoes it in order with their brush strokes.
    """
    writable = writable_pixels(plane.take(labels.data), mask, value, overwrite)
    labels.data_setitem(plane.indices(writable), value)
    return int(writable.sum()), int(mask.sum() - writable.sum())
