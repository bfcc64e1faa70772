"""Writing results into labels a block at a time, keeping what undo needs compressed.

A result (a propagation's slices, an automatic volume, a submit) is written as blocks of whole
slices, at most ``MAX_BLOCK_VOXELS`` each: each block is read, changed in memory and written back
with plain slicing, which a zarr array on disk turns into whole-chunk writes. What undo and redo
need is the changed part's bounding box before and after, compressed: labels are large uniform
areas, so 64 MB of them pack into about 100 kB (napari's own history keeps three index arrays and
two values per changed voxel, which at 78 M voxels was 8 GB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numcodecs
import numpy as np

MAX_BLOCK_VOXELS = 2**24  # a block in memory: 64 MB of uint32, three times over (before, after, changed)
_CODEC = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


class PackedBlock:
    """A block of labels kept compressed. numpy and zarr unpack it wherever they take an array
    (``labels[block] = packed``), which is how napari's undo replays it."""

    __slots__ = ("_packed", "_shape", "_dtype")

    def __init__(self, values: np.ndarray):
        values = np.ascontiguousarray(values)
        self._shape, self._dtype = values.shape, values.dtype
        self._packed = _CODEC.encode(values)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = np.frombuffer(_CODEC.decode(self._packed), dtype=self._dtype).reshape(self._shape)
        return values if dtype is None else values.astype(dtype)

    @property
    def nbytes(self) -> int:
        """What it holds in memory."""
        return len(self._packed)


@dataclass(frozen=True)
class BlockChange:
    """One written block: where (a slice per axis), its values before and after, how many changed."""

    block: tuple[slice, ...]
    before: PackedBlock
    after: PackedBlock
    voxels: int


def written_voxels(changes: Iterable[BlockChange]) -> int:
    return sum(change.voxels for change in changes)


def slices_per_block(slice_voxels: int) -> int:
    """How many whole slices of ``slice_voxels`` one block holds (at least one)."""
    return max(1, MAX_BLOCK_VOXELS // max(1, slice_voxels))


def resolved(block: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``block`` with explicit starts and stops (``slice(None)`` becomes the whole axis)."""
    block = tuple(block) + (slice(None),) * (len(shape) - len(block))
    return tuple(slice(*axis.indices(size)[:2]) for axis, size in zip(block, shape))


def _changed_box(changed: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the true voxels (None when there are none)."""
    box = []
    for axis in range(changed.ndim):
        hit = np.flatnonzero(changed.any(axis=tuple(a for a in range(changed.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def write_blocks(labels, pieces: Iterable[tuple[tuple[slice, ...], np.ndarray, np.ndarray]]) -> list[BlockChange]:
    """Write each ``(block, before, after)`` into ``labels`` (a numpy or zarr array): the bounding box
    of the voxels where ``after`` differs from ``before`` (which must be what ``labels`` holds there).

    If a write fails (a full disk), the blocks written so far are put back before the error is raised:
    a result is written whole or not at all.
    """
    changes: list[BlockChange] = []
    try:
        for block, before, after in pieces:
            changed = before != after
            box = _changed_box(changed)
            if box is not None:
                block = resolved(block, labels.shape)
                target = tuple(slice(axis.start + part.start, axis.start + part.stop) for axis, part in zip(block, box))
                labels[target] = after[box]
                changes.append(
                    BlockChange(target, PackedBlock(before[box]), PackedBlock(after[box]), int(changed.sum()))
                )
    except BaseException:
        undo_blocks(labels, changes)
        raise
    return changes


def undo_blocks(labels, changes: Iterable[BlockChange]) -> None:
    """Put back what ``changes`` wrote, newest first."""
    for change in reversed(list(changes)):
        labels[change.block] = np.asarray(change.before)


def block_piece(labels, block: tuple[slice, ...]) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """``(block, before, after)`` for ``write_blocks``: the block read from ``labels`` and a copy to change."""
    before = np.array(labels[block], copy=True)
    return block, before, before.copy()


def consecutive_runs(indices: Sequence[int], longest: int) -> Iterator[tuple[int, int]]:
    """Sorted ``indices`` as (first, last) runs of consecutive ones, at most ``longest`` long."""
    first = previous = None
    for index in indices:
        if first is not None and (index != previous + 1 or index - first >= longest):
            yield first, previous
            first = None
        if first is None:
            first = index
        previous = index
    if first is not None:
        yield first, previous


def slice_pieces(
    labels,
    indices: Sequence[int],
    block_of: Callable[[int, int], tuple[slice, ...]],
    change: Callable[[np.ndarray, int, int], None],
    step: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[tuple[slice, ...], np.ndarray, np.ndarray]]:
    """Pieces for ``write_blocks`` over the slices ``indices`` (sorted): runs of consecutive slices, as
    many as a block holds. ``block_of(first, last)`` is the block of slices first to last,
    ``change(after, first, last)`` changes its copy; ``step(done, total)`` follows the slices."""
    if not indices:
        return
    one_slice = resolved(block_of(indices[0], indices[0]), labels.shape)
    slice_voxels = int(np.prod([axis.stop - axis.start for axis in one_slice]))
    done = 0
    for first, last in consecutive_runs(indices, slices_per_block(slice_voxels)):
        block, before, after = block_piece(labels, block_of(first, last))
        change(after, first, last)
        yield block, before, after
        done += last - first + 1
        if step is not None:
            step(done, len(indices))
