"""A scan's voxel grid in patient space, and the one mapping between it and the array napari shows.

Medical and X-ray CT files place voxel (i, j, k) at ``origin + direction @ (spacing * (i, j, k))`` (ITK's
convention, LPS millimetres for medical files). napari places array index ``a`` at ``translate + scale * a``,
with no rotation. So a volume is shown reoriented: its axes permuted and flipped to the nearest axis-aligned
orientation, array axes in (z, y, x) order, so that napari's world coordinates are the scan's own physical
coordinates. ``SourceGeometry`` keeps the source grid and that permutation, so labels drawn on the shown array
go back onto the source grid voxel for voxel (``to_source``).

A direction that is not a signed permutation (an oblique scan) keeps a residual rotation that napari does
not show: ``oblique_degrees`` says how large it is, and the labels still go back exactly, since the mapping
is a permutation of voxels, not a resampling.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

GEOMETRY_KEY = "rwth_sam_source"  # the layer metadata key that holds a SourceGeometry (as a dict)


@dataclass(frozen=True)
class SourceGeometry:
    """The grid of a source file (ITK order: x, y, z) and how the shown array maps onto it.

    ``display_axes[b]`` is the source array axis that shown array axis ``b`` comes from, and
    ``display_flips[b]`` whether it runs backwards (both in numpy order, (z, y, x)).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major, ndim × ndim
    display_axes: tuple[int, ...]
    display_flips: tuple[bool, ...]
    source: str = ""  # the file or folder it came from
    file_format: str = ""  # what it was read as ("NIfTI", "DICOM series", ...)

    @classmethod
    def from_grid(cls, size, spacing, origin, direction, source: str = "", file_format: str = "") -> SourceGeometry:
        """The geometry of a grid, shown in the axis-aligned orientation nearest to its direction."""
        ndim = len(size)
        matrix = np.asarray(direction, float).reshape(ndim, ndim)
        world_of_axis = _nearest_permutation(matrix)  # ITK axis d runs mostly along world axis world_of_axis[d]
        axes, flips = [0] * ndim, [False] * ndim
        for itk_axis, world_axis in enumerate(world_of_axis):
            shown = ndim - 1 - world_axis  # numpy order is the reverse of ITK's
            axes[shown] = ndim - 1 - itk_axis
            flips[shown] = bool(matrix[world_axis, itk_axis] < 0)
        return cls(
            size=tuple(int(n) for n in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(v) for v in matrix.ravel()),
            display_axes=tuple(axes),
            display_flips=tuple(flips),
            source=source,
            file_format=file_format,
        )

    @property
    def ndim(self) -> int:
        return len(self.size)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction).reshape(self.ndim, self.ndim)

    @property
    def source_shape(self) -> tuple[int, ...]:
        """The source array's shape in numpy order."""
        return self.size[::-1]

    @property
    def display_shape(self) -> tuple[int, ...]:
        return tuple(self.source_shape[axis] for axis in self.display_axes)

    def _itk_axis(self, shown: int) -> int:
        return self.ndim - 1 - self.display_axes[shown]

    @property
    def scale(self) -> tuple[float, ...]:
        """The shown layer's ``scale`` (numpy order)."""
        return tuple(self.spacing[self._itk_axis(b)] for b in range(self.ndim))

    @property
    def translate(self) -> tuple[float, ...]:
        """The shown layer's ``translate``: the physical position of its first voxel (numpy order)."""
        first = np.zeros(self.ndim)
        for shown, flipped in enumerate(self.display_flips):
            if flipped:
                itk_axis = self._itk_axis(shown)
                first[itk_axis] = self.size[itk_axis] - 1
        position = np.asarray(self.origin) + self.direction_matrix @ (np.asarray(self.spacing) * first)
        return tuple(float(v) for v in position[::-1])

    @property
    def display_direction(self) -> np.ndarray:
        """The shown array's direction (ITK order): the identity unless the scan is oblique."""
        shown_direction = np.zeros((self.ndim, self.ndim))
        for shown in range(self.ndim):
            itk_axis = self._itk_axis(shown)
            sign = -1.0 if self.display_flips[shown] else 1.0
            shown_direction[:, self.ndim - 1 - shown] = sign * self.direction_matrix[:, itk_axis]
        return shown_direction

    @property
    def oblique_degrees(self) -> float:
        """The largest angle between a shown axis and the world axis it is drawn along."""
        cosines = np.clip(np.abs(np.diag(self.display_direction)), 0.0, 1.0)
        return float(np.degrees(np.arccos(cosines.min())))

    @property
    def reoriented(self) -> bool:
        return self.display_axes != tuple(range(self.ndim)) or any(self.display_flips)

    def to_display(self, source_array):
        """The source array (numpy order) as shown: permuted and flipped (a view, no copy)."""
        shown = source_array.transpose(self.display_axes)
        flips = tuple(slice(None, None, -1) if flipped else slice(None) for flipped in self.display_flips)
        return shown[flips]

    def to_source(self, shown_array):
        """The inverse of ``to_display``: a shown array (labels) on the source grid (a view, no copy)."""
        if tuple(shown_array.shape) != self.display_shape:
            raise ValueError(f"shape {tuple(shown_array.shape)} is not the shown grid's {self.display_shape}")
        flips = tuple(slice(None, None, -1) if flipped else slice(None) for flipped in self.display_flips)
        return shown_array[flips].transpose(np.argsort(self.display_axes))

    def source_slabs(self, shown_array, depth: int):
        """``to_source(shown_array)`` slab by slab along the source's slowest axis (numpy axis 0, ITK's z):
        (start, stop, slab) for source slices ``start:stop``, each reading only its own part of the shown
        array (which may be on disk)."""
        axis = self.display_axes.index(0)  # the shown axis the source's slowest axis is shown along
        count = self.source_shape[0]
        flips = tuple(slice(None, None, -1) if flipped else slice(None) for flipped in self.display_flips)
        order = np.argsort(self.display_axes)
        for start in range(0, count, depth):
            stop = min(count, start + depth)
            low, high = (count - stop, count - start) if self.display_flips[axis] else (start, stop)
            part = np.asarray(shown_array[(slice(None),) * axis + (slice(low, high),)])
            yield start, stop, part[flips].transpose(order)

    def nifti_affine(self) -> np.ndarray:
        """The source grid's voxel-to-world matrix as NIfTI stores it (RAS), from ITK's LPS one (as ITK
        writes it)."""
        if self.ndim != 3:
            raise ValueError(f"a NIfTI affine here is of a 3D grid, not {self.ndim}D")
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        affine[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine

    def describe(self) -> str:
        """One line for the layer's metadata: how the shown array relates to the file."""
        if not self.reoriented:
            text = "shown in the file's own voxel order"
        else:
            text = "shown reoriented to the nearest axis-aligned orientation (axes permuted or flipped)"
        if self.oblique_degrees > 1e-3:
            text += (
                f"; the scan is oblique by {self.oblique_degrees:.1f}° and is shown without that rotation "
                "(labels are still saved on the source grid exactly)"
            )
        return text

    def to_metadata(self) -> dict:
        """A plain dict (JSON-friendly) for a layer's ``metadata[GEOMETRY_KEY]``."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "display_axes": list(self.display_axes),
            "display_flips": list(self.display_flips),
            "source": self.source,
            "file_format": self.file_format,
            "orientation": self.describe(),
        }

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> SourceGeometry | None:
        """The geometry in a layer's metadata, if it has one."""
        entry = (metadata or {}).get(GEOMETRY_KEY)
        if not entry:
            return None
        return cls(
            size=tuple(int(n) for n in entry["size"]),
            spacing=tuple(float(s) for s in entry["spacing"]),
            origin=tuple(float(o) for o in entry["origin"]),
            direction=tuple(float(v) for v in entry["direction"]),
            display_axes=tuple(int(a) for a in entry["display_axes"]),
            display_flips=tuple(bool(f) for f in entry["display_flips"]),
            source=entry.get("source", ""),
            file_format=entry.get("file_format", ""),
        )

    @classmethod
    def from_layer(cls, shape, scale, translate, source: str = "", file_format: str = "") -> SourceGeometry:
        """A grid for an array that came with no file geometry: napari's scale and translate, no rotation."""
        ndim = len(shape)
        return cls(
            size=tuple(int(n) for n in shape[::-1]),
            spacing=tuple(float(s) for s in scale[::-1]),
            origin=tuple(float(t) for t in translate[::-1]),
            direction=tuple(float(v) for v in np.eye(ndim).ravel()),
            display_axes=tuple(range(ndim)),
            display_flips=(False,) * ndim,
            source=source,
            file_format=file_format,
        )


def _nearest_permutation(direction: np.ndarray) -> tuple[int, ...]:
    """For each column (an ITK axis) the world axis it is closest to, as one permutation: the assignment
    with the largest total |cosine| (every permutation is tried: there are at most 6)."""
    ndim = direction.shape[0]
    magnitudes = np.abs(direction)
    return max(
        itertools.permutations(range(ndim)),
        key=lambda world: sum(magnitudes[world[d], d] for d in range(ndim)),
    )
