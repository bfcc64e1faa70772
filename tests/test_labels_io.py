"""``ui/labels_io``: results become one step of the layer's own undo history (the napari internals it
relies on, checked here so that a napari release that changes them fails with their names), and a
result written in a worker locks its layer until it is done."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.block_writes import block_piece, write_blocks
from rwth_sam.ui.labels_io import check_unlocked, commit_block, record_undo_step, write_in_worker
from rwth_sam.ui.runner import PanelRun

from napari_helpers import dock, wait_idle

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_napari_undoes_and_redoes_a_recorded_block_write(viewer, backend):
    """napari's ``Labels.block_history`` and ``Labels._save_history`` with (where, before, after) atoms,
    replayed by its ``undo`` and ``redo`` through plain slicing."""
    data = (
        np.zeros((6, 32, 32), np.uint32)
        if backend == "numpy"
        else zarr.zeros((6, 32, 32), chunks=(2, 16, 16), dtype=np.uint32)
    )
    labels = viewer.add_labels(data)
    labels.data[0, 0, 0] = 9  # already there before: undo must keep it
    values = np.zeros((2, 32, 32), np.uint32)
    values[:, 4:12, 8:20] = 3
    written = commit_block(labels, (slice(2, 4),), values)
    assert written == 2 * 8 * 12 and len(labels._undo_history) == 1
    assert (np.asarray(labels.data[2:4]) == values).all()
    labels.undo()
    assert not np.asarray(labels.data[1:]).any() and labels.data[0, 0, 0] == 9
    labels.redo()
    assert (np.asarray(labels.data[2:4]) == values).all() and labels.data[0, 0, 0] == 9


def test_several_blocks_are_one_undo_step(viewer):
    labels = viewer.add_labels(np.zeros((6, 16, 16), np.uint8))
    pieces = []
    for first in (0, 3):
        block, before, after = block_piece(labels.data, (slice(first, first + 3),))
        after[:, first : first + 2] = 4
        pieces.append((block, before, after))
    record_undo_step(labels, write_blocks(labels.data, pieces))
    assert (labels.data == 4).sum() == 2 * 3 * 2 * 16
    labels.undo()
    assert not labels.data.any()


def test_a_layer_written_in_a_worker_is_locked_until_the_write_ends(viewer, checkpoint, qtbot):
    widget = dock(viewer, checkpoint)
    viewer.add_image(np.zeros((4, 16, 16), np.uint8))
    labels = widget.create_labels_layer()
    labels.mode = "paint"
    release, started = threading.Event(), threading.Event()
    told = []

    def write(step):
        started.set()
        release.wait(30)
        block, before, after = block_piece(labels.data, (slice(1, 2),))
        after[...] = 6
        return write_blocks(labels.data, [(block, before, after)]), "done"

    run = PanelRun(widget.runner, "propagate", (), widget.say)
    write_in_worker(run, labels, write, lambda outcome, voxels: told.append((outcome, voxels)), "Writing", 1)
    qtbot.waitUntil(started.is_set, timeout=10_000)
    assert not labels.editable, "napari's brush and eraser wait"
    with pytest.raises(InputError, match="being written"):
        check_unlocked(labels)
    with pytest.raises(InputError, match="being written"):
        widget.target_labels()
    release.set()
    wait_idle(qtbot, widget)
    assert told == [("done", 16 * 16)] and (labels.data[1] == 6).all()
    assert labels.editable and labels.mode == "paint"
    check_unlocked(labels)
    labels.undo()
    assert not labels.data.any()


def test_a_stale_result_written_in_a_worker_is_taken_back(viewer, checkpoint, qtbot):
    widget = dock(viewer, checkpoint)
    labels = viewer.add_labels(np.zeros((4, 16, 16), np.uint8))

    def write(step):
        block, before, after = block_piece(labels.data, (slice(0, 2),))
        after[...] = 2
        return write_blocks(labels.data, [(block, before, after)]), None

    def stale(outcome, voxels):
        raise InputError("The 3D session changed: nothing was written.")

    run = PanelRun(widget.runner, "propagate", (), widget.say)
    write_in_worker(run, labels, write, stale, "Writing", 1)
    wait_idle(qtbot, widget)
    assert not labels.data.any() and not labels._undo_history
    assert "nothing was written" in widget.status.value
