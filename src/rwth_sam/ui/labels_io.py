"""Writing into a user's labels layer: one undoable step, other labels kept unless asked otherwise.

Results are written as blocks (``core.labels.block_writes``) and recorded in the layer's own undo
history, so the user's Ctrl+Z takes them back in order with their brush strokes. napari records only
the changes it makes itself; this is the one module that adds to its history (``Labels.block_history``
and ``Labels._save_history``), as napari's "legacy" atoms (where, before, after): where is a block of
slices, before and after compressed blocks, which napari's undo and redo write back by plain slicing.
``test_labels_io.py`` checks that napari still replays them.

A large result is written, and labels are saved, in a worker while the layer is locked (``lock``):
napari's brush and the plugin's own writes wait, so that no edit lands between a block's read and its
write, or halfway through a save.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable

import napari
import numpy as np

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.block_writes import BlockChange, block_piece, undo_blocks, write_blocks, written_voxels
from rwth_sam.core.labels.labelling import writable

_LOCKED: weakref.WeakSet = weakref.WeakSet()


def record_undo_step(labels: napari.layers.Labels, changes: Iterable[BlockChange]) -> None:
    """Add written ``changes`` to the layer's history as one undo step, and show them."""
    changes = list(changes)
    if not changes:
        return
    with labels.block_history(), warnings.catch_warnings():
        # napari warns of private access from a plugin: it has no public way to add an undo step, and
        # its public one (data_setitem) keeps index arrays that cost 8 GB for a 78 M voxel result
        warnings.filterwarnings("ignore", "Private attribute access", FutureWarning)
        for change in changes:
            labels._save_history((change.block, change.before, change.after))
    labels.refresh()


def commit_block(labels: napari.layers.Labels, block: tuple[slice, ...], values: np.ndarray) -> int:
    """Replace the ``block`` of ``labels`` (a slice per axis) by ``values`` (block-shaped), as one
    undoable step. Returns the voxels that changed."""
    block, before, _ = block_piece(labels.data, block)
    changes = write_blocks(labels.data, [(block, before, values)])
    record_undo_step(labels, changes)
    return written_voxels(changes)


def commit_mask(
    labels: napari.layers.Labels, plane: SlicePlane, mask: np.ndarray, value: int, overwrite: bool
) -> tuple[int, int]:
    """Write an (H, W) mask on ``plane`` as ``value``, other labels kept unless ``overwrite``, as one
    undoable step; returns (voxels written, voxels kept). Reads and writes that one slice."""
    block, before, after = block_piece(labels.data, plane.block)
    section = plane.alone.take(after)
    allowed = mask & writable(section, value, overwrite)
    section[allowed] = value
    record_undo_step(labels, write_blocks(labels.data, [(block, before, after)]))
    written = int(allowed.sum())
    return written, int(mask.sum()) - written


# ---------------------------------------------------------------------- large writes and saves, in a worker
def check_unlocked(labels: napari.layers.Labels) -> None:
    """Refuse to write into a layer a worker is writing or saving."""
    if labels in _LOCKED:
        raise InputError(f"'{labels.name}' is being written or saved: wait a moment until it is done.")


def lock(labels: napari.layers.Labels) -> Callable[[], None]:
    """Keep every edit out of ``labels`` (napari's brush, eraser and fill, and the plugin's writes) while a
    worker writes or saves it; returns what ends the lock, giving back the layer's mode."""
    check_unlocked(labels)
    _LOCKED.add(labels)
    was_editable, mode = labels.editable, labels.mode
    labels.editable = False  # (napari switches to pan and zoom)

    def release() -> None:
        _LOCKED.discard(labels)
        labels.editable = was_editable
        if was_editable:
            labels.mode = mode

    return release


def write_in_worker(
    panel_run,
    labels: napari.layers.Labels,
    write: Callable[[Callable[[int, int], None]], tuple[list[BlockChange], object]],
    on_written: Callable[[object, int], None],
    description: str,
    total: int,
    on_finished: Callable[[], None] | None = None,
) -> None:
    """Run ``write(step)`` in a worker of ``panel_run`` (a ``PanelRun``) with ``labels`` locked; it
    writes into ``labels.data`` (``write_blocks``) and returns (its changes, anything). Back on the GUI
    thread, ``on_written(anything, voxels written)`` runs; if it raises (the result turned out to be
    stale), the changes are put back, else they become one undo step. ``on_finished`` follows the end,
    however it ends. The write cannot be cancelled: it is short next to the run that computed it, and
    stopping it halfway would leave half a result."""
    release = lock(labels)

    def written(outcome) -> None:
        changes, other = outcome
        try:
            on_written(other, written_voxels(changes))
        except BaseException:
            undo_blocks(labels.data, changes)
            labels.refresh()
            raise
        record_undo_step(labels, changes)

    def finished() -> None:
        release()
        if on_finished is not None:
            on_finished()

    panel_run.start(
        lambda step, should_stop: write(step), written, description, total, on_finished=finished, cancellable=False
    )
