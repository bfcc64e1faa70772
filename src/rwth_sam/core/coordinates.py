"""Every coordinate conversion of rwth-sam, in one place.

Three frames meet here:
- world: napari's canvas coordinates (layer scale and translate applied), in the viewer's axes;
- data: index coordinates of the image array, pixel centres at integers;
- slice: the 2D slice the user sees, as SAM wants it: x is the column, y the row.

A ``SlicePlane`` is one 2D slice of a 2D or 3D array oriented as on screen: its rows run along
``row_axis`` and its columns along ``col_axis``, so any of a volume's three axes can be the sliced
one. This module is the only place where (row, col) becomes (x, y).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from rwth_sam.core.errors import InputError


@dataclass(frozen=True)
class LayerGeometry:
    """How a layer's data sits in the world: per-axis scale and translate (napari's convention)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int) -> LayerGeometry:
        return cls((1.0,) * ndim, (0.0,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.scale)

    def world_to_data(self, world_point: Sequence[float]) -> np.ndarray:
        """The layer's data coordinates of a world point (which may have more, leading, axes)."""
        world = np.asarray(world_point, dtype=np.float64)[-self.ndim :]
        return (world - np.asarray(self.translate)) / np.asarray(self.scale)

    def data_to_world(self, data_point: Sequence[float]) -> np.ndarray:
        return np.asarray(data_point, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.translate)

    def at_slice(self, plane: SlicePlane) -> LayerGeometry:
        """Where a layer holding only ``plane`` (see ``SlicePlane.alone``) sits: this geometry moved
        along the sliced axis, so that napari shows it on that slice and on no other."""
        if plane.axis is None and plane.region is None:
            return self
        translate = list(self.translate)
        if plane.axis is not None:
            translate[plane.axis] += plane.index * self.scale[plane.axis]
        if plane.region is not None:  # the layer holds the region only: moved to its corner
            row0, _, col0, _ = plane.region
            translate[plane.row_axis] += row0 * self.scale[plane.row_axis]
            translate[plane.col_axis] += col0 * self.scale[plane.col_axis]
        return LayerGeometry(self.scale, tuple(translate))


@dataclass(frozen=True)
class SlicePlane:
    """One 2D slice of a 2D or 3D array, oriented as displayed; or a rectangle of it, ``region``
    (row0, row1, col0, col1, half-open, in the slice's rows and columns as displayed).

    A region is how a slice larger than the model's input is segmented at native resolution: the
    model sees only the region, and everything the plane reads, writes and converts (``take``,
    ``block``, (x, y) ↔ data) is of the region, placed at its offset in the slice.
    """

    shape: tuple[int, ...]
    row_axis: int
    col_axis: int
    axis: int | None = None
    index: int | None = None
    region: tuple[int, int, int, int] | None = None

    def __post_init__(self):
        ndim = len(self.shape)
        if ndim not in (2, 3):
            raise InputError(f"rwth-sam segments 2D images and 3D volumes, not {ndim}D data {self.shape}.")
        axes = {self.row_axis, self.col_axis, self.axis} - {None}
        if len(axes) != ndim or not axes <= set(range(ndim)):
            raise InputError(
                f"Axes rows={self.row_axis}, cols={self.col_axis}, sliced={self.axis} do not fit {ndim}D data."
            )
        if ndim == 3 and self.index is None:
            raise InputError(f"A slice of a volume needs a slice index along axis {self.axis}.")
        if ndim == 3 and not 0 <= self.index < self.shape[self.axis]:
            raise InputError(
                f"Slice {self.index} is outside the volume (axis {self.axis} has {self.shape[self.axis]} slices)."
            )
        if self.region is not None:
            row0, row1, col0, col1 = self.region
            height, width = self.shape[self.row_axis], self.shape[self.col_axis]
            if not (0 <= row0 < row1 <= height and 0 <= col0 < col1 <= width):
                raise InputError(f"The region rows {row0}–{row1}, columns {col0}–{col1} is not inside the slice.")

    @classmethod
    def of(cls, shape: Sequence[int], axis: int | None = None, index: int | None = None) -> SlicePlane:
        """The plane at ``index`` along ``axis`` (None for 2D), rows and columns in array order."""
        shape = tuple(int(s) for s in shape)
        rest = [a for a in range(len(shape)) if a != axis]
        if len(rest) < 2:
            raise InputError(f"Cannot slice {len(shape)}D data of shape {shape} along axis {axis}.")
        return cls(shape, rest[0], rest[1], axis, index)

    def within(self, row0: float, row1: float, col0: float, col1: float) -> SlicePlane:
        """The region of this slice between those rows and columns (as displayed), clipped to the slice
        and widened to whole pixels; the whole slice when the region covers it."""
        height, width = self.shape[self.row_axis], self.shape[self.col_axis]
        rows = max(0, int(np.floor(row0))), min(height, int(np.ceil(row1)))
        cols = max(0, int(np.floor(col0))), min(width, int(np.ceil(col1)))
        if rows == (0, height) and cols == (0, width):
            return self.whole
        return replace(self, region=(*rows, *cols))

    def square_around(self, box: Sequence[float], margin: float, least: int) -> SlicePlane:
        """The square region centred on an (x0, y0, x1, y1) box of this slice: ``margin`` times the box's
        larger side, at least ``least`` pixels, moved inside the slice at its edges (cut only where the
        slice is smaller)."""
        x0, y0, x1, y1 = box
        side = round(max(least, margin * max(abs(x1 - x0), abs(y1 - y0))))
        height, width = self.whole.size
        rows, cols = min(side, height), min(side, width)
        row0 = int(np.clip(round((y0 + y1) / 2 - rows / 2), 0, height - rows))
        col0 = int(np.clip(round((x0 + x1) / 2 - cols / 2), 0, width - cols))
        return self.whole.within(row0, row0 + rows, col0, col0 + cols)

    @property
    def whole(self) -> SlicePlane:
        """The whole slice this plane (or region) lies in."""
        return replace(self, region=None)

    @property
    def upright(self) -> SlicePlane:
        """This slice (or region) with its rows along the lower array axis, as ``SlicePlane.of`` and a 3D
        session hold it, however the viewer's axis order shows it."""
        if not self._transposed:
            return self
        region = None if self.region is None else (*self.region[2:], *self.region[:2])
        return replace(self, row_axis=self.col_axis, col_axis=self.row_axis, region=region)

    def xy_in(self, plane: SlicePlane, xy) -> np.ndarray:
        """(x, y) coordinates (points (N, 2), or a box (x0, y0, x1, y1)) of this slice as ``plane``, the same
        slice shown transposed or not, has them."""
        xy = np.asarray(xy, dtype=np.float64)
        if self._transposed == plane._transposed:
            return xy
        return xy.reshape(-1, 2)[:, ::-1].reshape(xy.shape)

    @property
    def offset(self) -> tuple[int, int]:
        """(row, column) of the region's first pixel in the slice: (0, 0) for the whole slice."""
        return (0, 0) if self.region is None else (self.region[0], self.region[2])

    @property
    def alone(self) -> SlicePlane:
        """This plane in an array that holds only this slice, or region (length 1 along the sliced
        axis): the preview layer's data, which costs one slice whatever the volume's size."""
        if self.axis is None and self.region is None:
            return self
        shape = list(self.shape)
        shape[self.row_axis], shape[self.col_axis] = self.size
        if self.axis is not None:
            shape[self.axis] = 1
        return SlicePlane(tuple(shape), self.row_axis, self.col_axis, self.axis, None if self.axis is None else 0)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the slice (or region) as displayed."""
        if self.region is not None:
            row0, row1, col0, col1 = self.region
            return row1 - row0, col1 - col0
        return self.shape[self.row_axis], self.shape[self.col_axis]

    @property
    def _transposed(self) -> bool:
        return self.row_axis > self.col_axis

    def _region_slices(self) -> list:
        index = [slice(None)] * len(self.shape)
        if self.region is not None:
            row0, row1, col0, col1 = self.region
            index[self.row_axis], index[self.col_axis] = slice(row0, row1), slice(col0, col1)
        return index

    def _index(self) -> tuple:
        index = self._region_slices()
        if self.axis is not None:
            index[self.axis] = self.index
        return tuple(index)

    @property
    def block(self) -> tuple[slice, ...]:
        """This slice (or region) as a block of the array (length 1 along the sliced axis; a 2D image
        whole): ``array[plane.block]`` has the shape of ``plane.alone``."""
        index = self._region_slices()
        if self.axis is not None:
            index[self.axis] = slice(self.index, self.index + 1)
        return tuple(index)

    def take(self, array: np.ndarray) -> np.ndarray:
        """This slice of ``array`` (spatial axes first, optional trailing channel axis), as displayed.

        For numpy arrays the result is a view, so writing into it writes into ``array``.
        """
        if tuple(array.shape[: len(self.shape)]) != self.shape:
            raise InputError(f"Array of shape {array.shape} does not match the image's shape {self.shape}.")
        section = array[self._index()]
        return np.swapaxes(section, 0, 1) if self._transposed else section

    def write(self, labels: np.ndarray, mask: np.ndarray, value: int) -> None:
        """Set ``labels`` to ``value`` where the (H, W) slice ``mask`` is true."""
        view = self.take(labels)
        if mask.shape != view.shape:
            raise InputError(f"Mask of shape {mask.shape} does not match the slice's shape {view.shape}.")
        view[mask] = value

    def slice_to_data(self, x: float, y: float) -> np.ndarray:
        row0, col0 = self.offset
        point = np.zeros(len(self.shape))
        point[self.col_axis], point[self.row_axis] = x + col0, y + row0
        if self.axis is not None:
            point[self.axis] = self.index
        return point

    def data_to_slice(self, data_point: Sequence[float]) -> tuple[float, float]:
        """(x, y) of a data point's projection onto this plane (relative to its region)."""
        row0, col0 = self.offset
        return float(data_point[self.col_axis]) - col0, float(data_point[self.row_axis]) - row0

    def contains(self, x: float, y: float) -> bool:
        height, width = self.size
        return -0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5

    def box_corners(self, box: Sequence[float]) -> np.ndarray:
        """The four data-space corners of an (x0, y0, x1, y1) box, for drawing it as a rectangle."""
        x0, y0, x1, y1 = box
        return np.array([self.slice_to_data(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])


def range_block(ndim: int, axis: int, first: int, last: int) -> tuple[slice, ...]:
    """The block of an ``ndim``-D array holding slices ``first`` to ``last`` (both in) along ``axis``."""
    return tuple(slice(first, last + 1) if a == axis else slice(None) for a in range(ndim))


def plane_at(
    world_point: Sequence[float],
    displayed_world_axes: Sequence[int],
    geometry: LayerGeometry,
    shape: Sequence[int],
) -> tuple[SlicePlane, float, float]:
    """The displayed slice under a world point, and the point's (x, y) on it.

    ``displayed_world_axes`` are the viewer's displayed axes, rows first (napari's ``dims.displayed``);
    the layer's axes are the last ``len(shape)`` world axes.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if len(displayed_world_axes) != 2:
        raise InputError("Switch the viewer to 2D display to segment (3D rendering has no slice to prompt on).")
    offset = len(world_point) - ndim
    if offset < 0:
        raise InputError(f"The viewer shows {len(world_point)} dimensions but the image has {ndim}.")
    row_axis, col_axis = (a - offset for a in displayed_world_axes)
    if min(row_axis, col_axis) < 0:
        raise InputError("The image's axes are not the displayed ones; show the image's last axes in the viewer.")
    data = geometry.world_to_data(world_point)
    axis = index = None
    if ndim == 3:
        (axis,) = set(range(3)) - {row_axis, col_axis}
        index = int(np.round(data[axis]))
        if not 0 <= index < shape[axis]:
            raise InputError(f"The current slice ({index}) is outside the image along axis {axis}.")
    plane = SlicePlane(shape, row_axis, col_axis, axis, index)
    x, y = plane.data_to_slice(data)
    return plane, x, y
