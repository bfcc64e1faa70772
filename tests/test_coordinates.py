"""World, data and slice coordinates: layer geometry, the displayed plane under a click, and slice I/O."""

from __future__ import annotations

import numpy as np
import pytest

import rwth_sam
from rwth_sam import LayerGeometry, SlicePlane
from rwth_sam.core.coordinates import plane_at, range_block

SHAPE = (5, 20, 30)
GEOMETRY = LayerGeometry(scale=(2.0, 0.5, 3.0), translate=(10.0, -4.0, 1.5))
DATA_POINT = np.array([3.0, 7.2, 12.6])


def world_of(data_point, geometry=GEOMETRY):
    """Hand-written napari convention: world = data * scale + translate."""
    return [d * s + t for d, s, t in zip(data_point, geometry.scale, geometry.translate)]


# --------------------------------------------------------------------------- layer geometry


def test_world_data_round_trip_with_scale_and_translate():
    world = GEOMETRY.data_to_world(DATA_POINT)
    assert world == pytest.approx([16.0, -0.4, 39.3])
    assert GEOMETRY.world_to_data(world) == pytest.approx(DATA_POINT)
    rng = np.random.default_rng(1)
    for point in rng.uniform(-50, 50, size=(20, 3)):
        assert GEOMETRY.data_to_world(GEOMETRY.world_to_data(point)) == pytest.approx(point)
        assert GEOMETRY.world_to_data(GEOMETRY.data_to_world(point)) == pytest.approx(point)


def test_world_point_with_extra_leading_axes():
    # a 3D layer in a 4D viewer (time first): the layer's axes are the last three
    world = [7.0, *world_of(DATA_POINT)]
    assert GEOMETRY.world_to_data(world) == pytest.approx(DATA_POINT)


def test_identity_geometry():
    geometry = LayerGeometry.identity(2)
    assert geometry.ndim == 2
    assert geometry.scale == (1.0, 1.0) and geometry.translate == (0.0, 0.0)
    assert geometry.world_to_data([3.5, -1.0]) == pytest.approx([3.5, -1.0])


# --------------------------------------------------------------------------- plane under a click


@pytest.mark.parametrize(
    "displayed, axis, index, x, y, size",
    [
        ((1, 2), 0, 3, 12.6, 7.2, (20, 30)),
        ((0, 2), 1, 7, 12.6, 3.0, (5, 30)),
        ((0, 1), 2, 13, 7.2, 3.0, (5, 20)),
        # transposed displays: rows along the later array axis
        ((2, 1), 0, 3, 7.2, 12.6, (30, 20)),
        ((2, 0), 1, 7, 3.0, 12.6, (30, 5)),
        ((1, 0), 2, 13, 3.0, 7.2, (20, 5)),
    ],
)
def test_plane_at_3d(displayed, axis, index, x, y, size):
    plane, px, py = plane_at(world_of(DATA_POINT), displayed, GEOMETRY, SHAPE)
    assert (plane.row_axis, plane.col_axis) == displayed
    assert plane.axis == axis and plane.index == index
    assert (px, py) == pytest.approx((x, y))
    assert plane.size == size
    assert plane.contains(px, py)
    # slice coordinates lead back to the clicked data point (with the slice index in the sliced axis)
    expected = DATA_POINT.copy()
    expected[axis] = index
    assert plane.slice_to_data(px, py) == pytest.approx(expected)


def test_plane_at_3d_layer_in_4d_world():
    world = [2.0, *world_of(DATA_POINT)]
    plane, x, y = plane_at(world, (2, 3), GEOMETRY, SHAPE)  # viewer axes 2, 3 are layer axes 1, 2
    assert (plane.row_axis, plane.col_axis, plane.axis, plane.index) == (1, 2, 0, 3)
    assert (x, y) == pytest.approx((12.6, 7.2))


@pytest.mark.parametrize("displayed, x, y, size", [((0, 1), 12.6, 7.2, (20, 30)), ((1, 0), 7.2, 12.6, (30, 20))])
def test_plane_at_2d(displayed, x, y, size):
    geometry = LayerGeometry(scale=(0.5, 3.0), translate=(-4.0, 1.5))
    world = world_of([7.2, 12.6], geometry)
    plane, px, py = plane_at(world, displayed, geometry, (20, 30))
    assert plane.axis is None and plane.index is None
    assert (plane.row_axis, plane.col_axis) == displayed
    assert (px, py) == pytest.approx((x, y))
    assert plane.size == size


def test_plane_at_rounds_the_slice_to_the_nearest():
    plane, _, _ = plane_at(world_of([4.4, 1.0, 1.0]), (1, 2), GEOMETRY, SHAPE)
    assert plane.index == 4
    plane, _, _ = plane_at(world_of([-0.4, 1.0, 1.0]), (1, 2), GEOMETRY, SHAPE)
    assert plane.index == 0


def test_click_outside_the_slice_is_not_contained():
    plane, x, y = plane_at(world_of([3.0, 25.0, -2.0]), (1, 2), GEOMETRY, SHAPE)
    assert (x, y) == pytest.approx((-2.0, 25.0))
    assert not plane.contains(x, y)
    height, width = plane.size
    assert plane.contains(-0.5, -0.5) and plane.contains(width - 0.51, height - 0.51)
    assert not plane.contains(width - 0.5, 0) and not plane.contains(0, height - 0.5)
    assert not plane.contains(-0.51, 0) and not plane.contains(0, -0.51)


@pytest.mark.parametrize("slice_position", [5.0, 7.0, -0.6, -3.0])
def test_slice_outside_the_volume_is_an_input_error(slice_position):
    world = world_of([slice_position, 1.0, 1.0])
    with pytest.raises(rwth_sam.InputError, match="outside the image along axis 0"):
        plane_at(world, (1, 2), GEOMETRY, SHAPE)


def test_4d_data_is_an_input_error():
    with pytest.raises(rwth_sam.InputError, match="not 4D"):
        plane_at([0.0, 1.0, 2.0, 3.0], (2, 3), LayerGeometry.identity(4), (2, 5, 20, 30))
    with pytest.raises(rwth_sam.InputError, match="not 4D"):
        SlicePlane.of((2, 5, 20, 30), axis=0, index=1)


def test_3d_display_is_an_input_error():
    with pytest.raises(rwth_sam.InputError, match="2D display"):
        plane_at(world_of(DATA_POINT), (0, 1, 2), GEOMETRY, SHAPE)


def test_layer_with_more_dimensions_than_the_world_point_is_an_input_error():
    with pytest.raises(rwth_sam.InputError, match="viewer shows 2 dimensions but the image has 3"):
        plane_at([1.0, 2.0], (0, 1), GEOMETRY, SHAPE)


def test_displayed_axes_that_are_not_the_layers_are_an_input_error():
    # a 2D layer in a 3D viewer showing axes (0, 1): viewer axis 0 is not one of the layer's
    with pytest.raises(rwth_sam.InputError, match="not the displayed ones"):
        plane_at([1.0, 2.0, 3.0], (0, 1), LayerGeometry.identity(2), (20, 30))


# --------------------------------------------------------------------------- plane validation


@pytest.mark.parametrize(
    "shape, row, col, axis, index",
    [
        (SHAPE, 1, 1, 0, 0),  # rows and columns along the same axis
        (SHAPE, 1, 2, None, None),  # a volume needs a sliced axis
        (SHAPE, 1, 3, 0, 0),  # no axis 3
        (SHAPE, 1, 2, 0, 5),  # slice past the end
        (SHAPE, 1, 2, 0, -1),
        (SHAPE, 1, 2, 0, None),  # no slice index
        ((20, 30), 0, 1, 2, 0),  # 2D data has no sliced axis
        ((30,), 0, 0, None, None),
    ],
)
def test_invalid_planes_are_input_errors(shape, row, col, axis, index):
    with pytest.raises(rwth_sam.InputError):
        SlicePlane(shape, row, col, axis, index)


def test_plane_of_uses_array_order():
    plane = SlicePlane.of(SHAPE, axis=1, index=4)
    assert (plane.row_axis, plane.col_axis, plane.axis, plane.index) == (0, 2, 1, 4)
    plane = SlicePlane.of((20, 30))
    assert (plane.row_axis, plane.col_axis, plane.axis) == (0, 1, None)
    with pytest.raises(rwth_sam.InputError):
        SlicePlane.of((20, 30), axis=0, index=3)
    with pytest.raises(rwth_sam.InputError):
        SlicePlane.of(SHAPE, axis=0)


# --------------------------------------------------------------------------- reading and writing slices


VOLUME = np.arange(np.prod(SHAPE)).reshape(SHAPE)


@pytest.mark.parametrize(
    "row, col, axis, index, expected",
    [
        (1, 2, 0, 3, VOLUME[3]),
        (2, 1, 0, 3, VOLUME[3].T),
        (0, 2, 1, 7, VOLUME[:, 7, :]),
        (2, 0, 1, 7, VOLUME[:, 7, :].T),
        (0, 1, 2, 13, VOLUME[:, :, 13]),
        (1, 0, 2, 13, VOLUME[:, :, 13].T),
    ],
)
def test_take_is_a_view_oriented_as_displayed(row, col, axis, index, expected):
    plane = SlicePlane(SHAPE, row, col, axis, index)
    section = plane.take(VOLUME)
    assert section.shape == plane.size
    assert np.array_equal(section, expected)
    assert np.shares_memory(section, VOLUME)
    # pixel (x, y) of the slice is the voxel at slice_to_data(x, y)
    height, width = plane.size
    for x, y in [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1), (width // 2, height // 3)]:
        voxel = tuple(int(v) for v in plane.slice_to_data(x, y))
        assert section[y, x] == VOLUME[voxel]


def test_take_keeps_a_trailing_channel_axis():
    rgb = np.zeros(SHAPE + (3,), np.uint8)
    rgb[3, 7, 12] = (1, 2, 3)
    plane = SlicePlane(SHAPE, 2, 1, 0, 3)
    section = plane.take(rgb)
    assert section.shape == (30, 20, 3)
    assert section[12, 7].tolist() == [1, 2, 3]


def test_take_refuses_an_array_of_another_shape():
    with pytest.raises(rwth_sam.InputError, match="does not match"):
        SlicePlane(SHAPE, 1, 2, 0, 0).take(np.zeros((5, 20, 31)))


@pytest.mark.parametrize(
    "row, col, axis, index", [(1, 2, 0, 3), (2, 1, 0, 3), (0, 2, 1, 7), (2, 0, 1, 7), (1, 0, 2, 13)]
)
def test_write_sets_the_right_voxels(row, col, axis, index):
    labels = np.zeros(SHAPE, np.uint16)
    plane = SlicePlane(SHAPE, row, col, axis, index)
    height, width = plane.size
    x, y = width - 2, height - 1
    mask = np.zeros((height, width), bool)
    mask[y, x] = True
    mask[0, 1] = True
    plane.write(labels, mask, 9)
    voxels = {tuple(int(v) for v in plane.slice_to_data(px, py)) for px, py in [(x, y), (1, 0)]}
    assert {tuple(v) for v in np.argwhere(labels == 9)} == voxels
    assert np.count_nonzero(labels) == 2
    for voxel in voxels:
        assert voxel[axis] == index


def test_write_into_a_2d_labels_layer_transposed():
    labels = np.zeros((20, 30), np.int32)
    plane = SlicePlane((20, 30), 1, 0)
    mask = np.zeros((30, 20), bool)
    mask[25, 4] = True  # row 25 (data axis 1), column 4 (data axis 0)
    plane.write(labels, mask, 3)
    assert labels[4, 25] == 3 and np.count_nonzero(labels) == 1


def test_write_refuses_a_mask_of_the_wrong_shape():
    labels = np.zeros(SHAPE, np.uint8)
    plane = SlicePlane(SHAPE, 2, 1, 0, 3)
    with pytest.raises(rwth_sam.InputError, match="does not match"):
        plane.write(labels, np.ones((20, 30), bool), 1)  # not transposed like the display
    assert not labels.any()


def test_box_corners_in_data_space():
    plane = SlicePlane(SHAPE, 2, 1, 0, 3)  # transposed: x runs along axis 1, y along axis 2
    corners = plane.box_corners((1.0, 2.0, 5.0, 8.0))
    assert corners.tolist() == [[3, 1, 2], [3, 5, 2], [3, 5, 8], [3, 1, 8]]
    assert plane.data_to_slice(corners[2]) == (5.0, 8.0)


@pytest.mark.parametrize("row, col, axis, index", [(1, 2, 0, 3), (2, 1, 0, 3), (2, 0, 1, 7), (0, 1, None, None)])
def test_the_block_of_a_slice_addresses_the_same_voxels_as_write(row, col, axis, index):
    """Submits write ``plane.alone.take(block)`` of ``labels[plane.block]``: the voxels ``write`` sets."""
    shape = SHAPE if axis is not None else SHAPE[1:]
    plane = SlicePlane(shape, row, col, axis, index)
    mask = np.zeros(plane.size, bool)
    mask[1, 2] = mask[-1, 0] = True
    labels = np.zeros(shape, np.uint8)
    plane.write(labels, mask, 1)
    target = np.zeros(shape, np.uint8)
    block = target[plane.block].copy()
    plane.alone.take(block)[mask] = 1
    target[plane.block] = block
    assert np.array_equal(target, labels) and np.count_nonzero(target) == 2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slice_alone_and_as_a_block_of_the_array(axis):
    """The one-slice preview holds ``plane.alone``; ``array[plane.block]`` is the same slice of the volume."""
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    plane = SlicePlane.of(volume.shape, axis, 2)
    block = volume[plane.block]
    assert block.shape == plane.alone.shape and block.shape[axis] == 1
    np.testing.assert_array_equal(plane.alone.take(block), plane.take(volume))
    np.testing.assert_array_equal(volume[range_block(3, axis, 1, 2)], np.take(volume, [1, 2], axis=axis))
    moved = LayerGeometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0)).at_slice(plane)
    expected = [10.0, 20.0, 30.0]
    expected[axis] += 2 * (2.0, 3.0, 4.0)[axis]
    assert moved.translate == tuple(expected) and moved.scale == (2.0, 3.0, 4.0)


def test_a_2d_image_is_its_own_slice():
    plane = SlicePlane.of((5, 6))
    assert plane.alone == plane and np.zeros((5, 6))[plane.block].shape == (5, 6)
    assert LayerGeometry((2.0, 3.0), (1.0, 1.0)).at_slice(plane).translate == (1.0, 1.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_region_of_a_slice_reads_writes_and_converts_at_its_offset(axis):
    shape = (30, 40, 50)
    volume = np.arange(np.prod(shape)).reshape(shape)
    whole = SlicePlane.of(shape, axis, 7)
    region = whole.within(3.4, 12.0, 5.0, 21.6)  # widened to whole pixels: rows 3–12, columns 5–22
    assert region.region == (3, 12, 5, 22) and region.size == (9, 17) and region.offset == (3, 5)
    np.testing.assert_array_equal(region.take(volume), whole.take(volume)[3:12, 5:22])
    mask = np.zeros(region.size, bool)
    mask[2, 4] = True
    labels = np.zeros(shape, np.uint8)
    region.alone.take(labels[region.block])[mask] = 1  # a view: written into labels
    assert whole.take(labels)[5, 9] == 1 and labels.sum() == 1
    point = region.slice_to_data(4.0, 2.0)
    assert whole.data_to_slice(point) == (9.0, 5.0) and region.data_to_slice(point) == (4.0, 2.0)
    np.testing.assert_array_equal(region.alone.take(volume[region.block]), region.take(volume))
    assert region.whole == whole and whole.within(0, 99, -4, 99) == whole
    geometry = LayerGeometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0)).at_slice(region)
    moved = list(geometry.translate)
    assert moved[region.row_axis] == (10.0, 20.0, 30.0)[region.row_axis] + 3 * (2.0, 3.0, 4.0)[region.row_axis]
    assert moved[region.col_axis] == (10.0, 20.0, 30.0)[region.col_axis] + 5 * (2.0, 3.0, 4.0)[region.col_axis]
    with pytest.raises(rwth_sam.InputError, match="not inside the slice"):
        SlicePlane(shape, whole.row_axis, whole.col_axis, axis, 7, region=(0, 99, 0, 5))


def test_the_square_around_a_box_keeps_its_side_at_the_slice_edges():
    plane = SlicePlane.of((5, 600, 700), 0, 2)
    centred = plane.square_around((300, 200, 340, 230), margin=2.0, least=256)
    assert centred.region == (87, 343, 192, 448), "256 px, centred on (row 215, column 320)"
    corner = plane.square_around((2, 590, 30, 598), margin=2.0, least=256)
    assert corner.region == (344, 600, 0, 256), "moved inside the slice, still square"
    large = plane.square_around((100, 100, 500, 300), margin=2.0, least=256)
    assert large.region is None, "twice a 400-px box is more than the slice: the whole slice"


def test_an_upright_plane_is_the_same_slice_and_region_with_x_and_y_swapped():
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    shown = SlicePlane((4, 5, 6), row_axis=2, col_axis=1, axis=0, index=2, region=(1, 4, 0, 3))  # rows along axis 2
    upright = shown.upright
    assert (upright.row_axis, upright.col_axis, upright.region) == (1, 2, (0, 3, 1, 4))
    np.testing.assert_array_equal(np.asarray(upright.take(volume)), np.asarray(shown.take(volume)).T)
    assert upright.upright is upright
    box = (0.5, 1.0, 2.5, 2.0)  # (x0, y0, x1, y1) as shown
    np.testing.assert_array_equal(shown.xy_in(upright, box), (1.0, 0.5, 2.0, 2.5))
    np.testing.assert_array_equal(shown.xy_in(upright, [(1, 2), (3, 0)]), [(2, 1), (0, 3)])
    np.testing.assert_array_equal(upright.xy_in(upright, box), box)
