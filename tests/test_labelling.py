"""The rules for writing into a user's labels, without Qt: label values the dtype holds, read-only
arrays, and a 3D run's take-back record, which never erases what the user changed since."""

from __future__ import annotations

import numpy as np
import pytest

from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.labelling import WriteRecord, check_label_value, check_writable

OBJECT = 1  # object id of the run
VALUE = 5  # its label value


def square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def run(record, block, masks, overwrite=False, array_id=1):
    """One run's merge over slices 0.. of ``block`` (index → mask of the one object)."""
    return record.merge(block, 0, 0, {i: {OBJECT: m} for i, m in masks.items()}, {OBJECT: VALUE}, overwrite, array_id)


def test_a_later_run_replaces_the_earlier_result_and_gives_back_what_it_overwrote():
    block = np.zeros((3, 8, 8), np.uint16)
    block[1, :2, :2] = 7  # the user's label, under the first result
    record = WriteRecord()
    assert run(record, block, {1: square((8, 8), 0, 0, 6)}, overwrite=True) == []
    assert (block[1, :2, :2] == VALUE).all()
    assert run(record, block, {1: square((8, 8), 4, 4, 2)}, overwrite=True) == []
    assert (block[1, :2, :2] == 7).all(), "the overwritten label must come back"
    assert (block[1] == VALUE).sum() == 4 and (block[1] == 0).sum() == 64 - 4 - 4


@pytest.mark.parametrize("edit", ["undo, then the brush with the same value", "the brush elsewhere", "another plugin"])
def test_a_slice_changed_since_the_run_is_never_taken_back(edit):
    """The defect the sweep found: after undo, voxels the user painted where the result had been
    were erased by the next run's take-back."""
    block = np.zeros((2, 8, 8), np.uint8)
    record = WriteRecord()
    run(record, block, {0: square((8, 8), 0, 0, 4)})
    if edit.startswith("undo"):
        block[0] = 0  # napari's undo: the slice as before the run
        block[0, 1:3, 1:3] = VALUE  # painted by the user, inside the old result
    elif edit == "the brush elsewhere":
        block[0, 6:, 6:] = VALUE
    else:
        block[0, 7, 0] = 9
    users = block[0].copy()
    assert run(record, block, {0: square((8, 8), 4, 4, 2)}) == [0]
    assert (block[0][users != 0] == users[users != 0]).all(), "a voxel the user set was changed"
    assert (block[0, 4:6, 4:6] == VALUE).all(), "the new result is written all the same"


def test_after_redo_the_slice_is_the_runs_again():
    block = np.zeros((1, 8, 8), np.uint8)
    record = WriteRecord()
    run(record, block, {0: square((8, 8), 0, 0, 4)})
    written = block.copy()
    block[0] = 0  # undo …
    block[:] = written  # … and redo
    assert run(record, block, {0: square((8, 8), 4, 4, 2)}) == []
    assert (block[0] == VALUE).sum() == 4, "the earlier result must be replaced"


def test_a_record_is_not_applied_to_another_labels_array():
    block = np.zeros((1, 8, 8), np.uint8)
    record = WriteRecord()
    run(record, block, {0: square((8, 8), 0, 0, 4)}, array_id=1)
    other = np.zeros((1, 8, 8), np.uint8)
    other[0, :4, :4] = VALUE  # the user's own, where the first array got the result
    run(record, other, {0: square((8, 8), 4, 4, 2)}, array_id=2)
    assert (other[0, :4, :4] == VALUE).all()


def test_an_object_lost_on_a_finished_slice_takes_its_earlier_result_back():
    block = np.zeros((1, 8, 8), np.uint8)
    record = WriteRecord()
    run(record, block, {0: square((8, 8), 0, 0, 4)})
    record.merge(block, 0, 0, {0: {}}, {OBJECT: VALUE}, False, 1)
    assert not block.any()


@pytest.mark.parametrize(
    "value, dtype, instance, words",
    [
        (300, np.uint8, False, "cannot hold label value 300: uint8 holds 1 to 255"),
        (200, np.int8, False, "int8 holds 1 to 127"),
        (256, np.uint8, True, "no free label id left: 255"),
        (0, np.uint32, False, "cannot hold label value 0"),
        (2, np.bool_, False, "bool holds 1 to 1"),
        (1, np.float32, False, "not whole numbers"),
    ],
)
def test_label_values_the_dtype_cannot_hold_are_refused(value, dtype, instance, words):
    with pytest.raises(InputError, match="labels layer 'cells'") as error:
        check_label_value(value, dtype, "cells", instance=instance)
    assert words in str(error.value)


@pytest.mark.parametrize("value, dtype", [(255, np.uint8), (127, np.int8), (2**31 - 1, np.int32), (1, np.bool_)])
def test_label_values_the_dtype_holds_are_kept(value, dtype):
    assert check_label_value(value, dtype, "cells") == value


def test_a_read_only_labels_array_is_refused():
    array = np.zeros((4, 4), np.uint8)
    check_writable(array, "cells")
    array.flags.writeable = False
    with pytest.raises(InputError, match="'cells' is read-only"):
        check_writable(array, "cells")
