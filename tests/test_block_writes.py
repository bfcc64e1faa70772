"""Writing results a block at a time (``core.labels.block_writes``), and a 3D run's result written
that way: only the range's slices read and written, a few at a time, with undo kept compressed, and a
failed write leaving the labels as they were. Qt-free."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr

from rwth_sam.core.labels import block_writes
from rwth_sam.core.labels.block_writes import (
    PackedBlock,
    consecutive_runs,
    undo_blocks,
    write_blocks,
    written_voxels,
)
from rwth_sam.core.tasks.propagation import PropagationResult
from rwth_sam.core.tasks.volume_session import VolumeSession

from conftest import CountingVolume


class WritableVolume(CountingVolume):
    """A ``CountingVolume`` that can be written, recording each write's key; ``fail_at`` makes that
    write (counted from 1) raise, as a full disk would."""

    def __init__(self, array, fail_at: int | None = None):
        super().__init__(array)
        self.writes: list = []
        self.fail_at = fail_at

    def __setitem__(self, key, values):
        self.writes.append(key)
        if len(self.writes) == self.fail_at:
            raise OSError(28, "No space left on device")
        self.array[key] = values


def test_a_packed_block_gives_back_its_values_in_far_less_memory():
    labels = np.zeros((4, 512, 512), np.uint32)
    labels[:, 100:400, 50:300] = 7
    labels[2, 10:20, 10:20] = 70000
    packed = PackedBlock(labels)
    np.testing.assert_array_equal(np.asarray(packed), labels)
    assert np.asarray(packed).dtype == np.uint32
    assert packed.nbytes < labels.nbytes / 100
    target = zarr.zeros(labels.shape, chunks=(2, 128, 128), dtype=np.uint32)
    target[...] = packed  # how napari's undo writes it back: plain slicing of zarr or numpy
    np.testing.assert_array_equal(target[...], labels)


def test_only_the_changed_box_is_written_and_undo_puts_it_back():
    labels = np.full((6, 32, 32), 3, np.uint16)
    volume = WritableVolume(labels)
    before = labels[1:4].copy()
    after = before.copy()
    after[0, 5:9, 10:12] = 8
    after[2, 20, 30] = 9
    (change,) = write_blocks(volume, [((slice(1, 4), slice(None), slice(None)), before, after)])
    assert change.block == (slice(1, 4), slice(5, 21), slice(10, 31)) and volume.writes == [change.block]
    assert change.voxels == 4 * 2 + 1 == written_voxels([change])
    assert labels[1, 5, 10] == 8 and labels[3, 20, 30] == 9 and (labels == 3).sum() == labels.size - 9
    undo_blocks(volume, [change])
    assert (labels == 3).all()
    assert write_blocks(volume, [((slice(0, 1),), labels[:1].copy(), labels[:1].copy())]) == [], "nothing changed"


def test_a_failed_write_puts_back_what_was_written_before_it():
    labels = np.zeros((4, 8, 8), np.uint8)
    pieces = []
    for index in range(4):
        after = np.zeros((1, 8, 8), np.uint8)
        after[0, index, :] = index + 1
        pieces.append(((slice(index, index + 1),), np.zeros((1, 8, 8), np.uint8), after))
    volume = WritableVolume(labels, fail_at=3)
    with pytest.raises(OSError, match="No space left"):
        write_blocks(volume, pieces)
    assert not labels.any(), "the two slices written before the failure were put back"


def test_consecutive_runs_split_at_gaps_and_at_the_block_length():
    assert list(consecutive_runs([2, 3, 4, 5, 6, 9, 10, 12], 3)) == [(2, 4), (5, 6), (9, 10), (12, 12)]
    assert list(consecutive_runs([], 3)) == []


# ------------------------------------------------------------------ a 3D run's result
SHAPE = (40, 64, 64)
LIVER = 5


def _session_and_result(start=4, end=35, shape=SHAPE):
    session = VolumeSession()
    session.set_bound("start", 0, start)
    session.set_bound("end", 0, end)
    session.add_object((10, 10, 40, 40), LIVER, "liver")
    middle = np.zeros(shape[1:], bool)
    middle[10:40, 10:40] = True
    session.conditioning = {session.middle: {1: middle}}
    masks = {}
    for index in range(start, end + 1):
        mask = np.zeros(shape[1:], bool)
        mask[10 + index % 5 : 40, 10 : 40 - index % 7] = True
        masks[index] = {1: mask}
    return session, PropagationResult(masks=masks, finished=sorted(masks), cancelled=False, flags=[])


def test_a_run_is_written_a_few_slices_at_a_time_and_equals_the_whole_block(monkeypatch):
    session, result = _session_and_result()
    expected = np.zeros(SHAPE, np.uint32)
    for index, by_object in result.masks.items():
        expected[index][by_object[1]] = LIVER
    monkeypatch.setattr(block_writes, "MAX_BLOCK_VOXELS", 3 * 64 * 64)  # three slices a block
    volume = WritableVolume(zarr.zeros(SHAPE, chunks=(8, 32, 32), dtype=np.uint32))
    steps = []
    applied = session.apply(session.start_run("layer"), result, volume, False, lambda *step: steps.append(step))
    np.testing.assert_array_equal(volume.array[...], expected)
    assert volume.slices_read() == set(range(4, 36)), "the range's slices only"
    assert all(key[0].stop - key[0].start <= 3 for key in volume.writes) and len(volume.writes) == 11
    assert steps[-1] == (32, 32) and len(steps) == 11
    assert written_voxels(applied.changes) == int((expected == LIVER).sum())
    assert sum(c.before.nbytes + c.after.nbytes for c in applied.changes) < expected.nbytes / 20
    undo_blocks(volume, applied.changes)
    assert not volume.array[...].any()


def test_writing_a_run_takes_memory_of_a_block_not_of_the_range(monkeypatch):
    session, result = _session_and_result(0, 79, shape=(80, 256, 256))
    labels = np.zeros((80, 256, 256), np.uint32)
    monkeypatch.setattr(block_writes, "MAX_BLOCK_VOXELS", 256 * 256)
    range_bytes = labels.nbytes
    tracemalloc.start()
    try:
        session.apply(session.start_run("layer"), result, labels, False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (labels == LIVER).any()
    assert peak < range_bytes / 5, f"peak {peak / 1e6:.1f} MB for a range of {range_bytes / 1e6:.1f} MB"


def test_a_run_whose_write_fails_leaves_labels_and_record_as_they_were(monkeypatch):
    session, result = _session_and_result()
    monkeypatch.setattr(block_writes, "MAX_BLOCK_VOXELS", 4 * 64 * 64)
    labels = np.zeros(SHAPE, np.uint32)
    session.apply(session.start_run("layer"), result, labels, False)
    first = labels.copy()
    record = dict(session.written.slices)
    second = PropagationResult(
        masks={index: {1: ~masks[1]} for index, masks in result.masks.items()},
        finished=result.finished, cancelled=False, flags=[],
    )  # fmt: skip
    failing = WritableVolume(labels, fail_at=4)
    with pytest.raises(OSError):
        session.apply(session.start_run("layer"), second, failing, False)
    np.testing.assert_array_equal(labels, first)
    assert session.written.slices == record, "the record of the first run still holds, to take it back later"
