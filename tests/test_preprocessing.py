"""Intensity windows and the conversion of slices to the 8-bit RGB that SAM sees."""

from __future__ import annotations

import numpy as np
import pytest

import rwth_sam
from rwth_sam import CT_WINDOWS, IntensityWindow, to_rgb


def gray(rgb: np.ndarray) -> np.ndarray:
    """The single channel of a grey slice converted to RGB (all three channels must agree)."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


# --------------------------------------------------------------------------- windows


def test_contrast_limits_window_maps_linearly_and_clips():
    window = IntensityWindow(100.0, 356.0)  # napari contrast limits
    image = np.array([[-50.0, 100.0, 164.0, 228.0], [356.0, 1000.0, 99.0, 357.0]], dtype=np.float32)
    out = gray(to_rgb(image, window))
    scale = 255 / 256
    expected = [[0, 0, round(64 * scale), round(128 * scale)], [255, 255, 0, 255]]
    assert out.tolist() == expected
    assert out.shape == image.shape


def test_window_is_monotonic_over_its_range():
    window = IntensityWindow(-1.0, 1.0)
    image = np.linspace(-2, 2, 401, dtype=np.float64).reshape(1, -1)
    out = gray(to_rgb(image, window))[0].astype(int)
    assert np.all(np.diff(out) >= 0)
    assert out[0] == 0 and out[-1] == 255
    assert set(out[:101]) == {0} and set(out[-101:]) == {255}  # clipped outside [-1, 1]
    assert len(np.unique(out)) > 200  # the 8-bit range is used inside the window


@pytest.mark.parametrize("low, high", [(5.0, 5.0), (10.0, 0.0), (0.0, np.inf), (np.nan, 1.0)])
def test_invalid_windows_are_refused(low, high):
    with pytest.raises(rwth_sam.InputError, match="low < high"):
        IntensityWindow(low, high)


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("CT soft tissue", -160.0, 240.0),
        ("CT lung", -1350.0, 150.0),
        ("CT bone", -500.0, 1300.0),
        ("CT brain", 0.0, 80.0),
    ],
)
def test_ct_presets(name, low, high):
    assert name in CT_WINDOWS
    window = IntensityWindow.ct_preset(name)
    assert (window.low, window.high) == (low, high)


def test_unknown_ct_preset_lists_the_known_ones():
    with pytest.raises(rwth_sam.InputError, match="CT soft tissue"):
        IntensityWindow.ct_preset("CT liver")


def test_int16_hounsfield_units_through_soft_tissue_window():
    hu = np.array([[-1000, -160, 0, 40], [100, 240, 1000, 3071]], dtype=np.int16)
    original = hu.copy()
    out = gray(to_rgb(hu, IntensityWindow.ct_preset("CT soft tissue")))
    # (hu + 160) * 255 / 400, rounded and clipped
    expected = np.clip(np.rint((hu.astype(np.float64) + 160) * 255 / 400), 0, 255)
    assert out.tolist() == expected.astype(np.uint8).tolist()
    assert out[0, 0] == 0 and out[0, 2] == 102 and out[1, 1] == 255
    assert np.array_equal(hu, original)


def test_uint16_through_contrast_limits():
    image = np.array([[0, 1000, 2048], [4095, 40000, 65535]], dtype=np.uint16)
    out = gray(to_rgb(image, IntensityWindow(0.0, 4095.0)))
    assert out.tolist() == [[0, round(1000 * 255 / 4095), round(2048 * 255 / 4095)], [255, 255, 255]]


def test_uint16_needs_a_window():
    with pytest.raises(rwth_sam.InputError, match="needs an intensity window"):
        to_rgb(np.zeros((4, 4), np.uint16), None)


def test_uint8_without_window_is_used_as_it_is(rng):
    image = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
    out = to_rgb(image, None)
    assert out.shape == (7, 9, 3) and out.flags.c_contiguous
    assert np.array_equal(gray(out), image)
    full = to_rgb(image, IntensityWindow.full_range(np.uint8))
    assert np.array_equal(full, out)  # the full uint8 range maps every value to itself


def test_full_range_of_integer_types():
    assert IntensityWindow.full_range(np.uint8) == IntensityWindow(0.0, 255.0)
    assert IntensityWindow.full_range(np.uint16) == IntensityWindow(0.0, 65535.0)
    assert IntensityWindow.full_range(np.int16) == IntensityWindow(-32768.0, 32767.0)


def test_bool_image():
    image = np.array([[True, False], [False, True]])
    assert gray(to_rgb(image, IntensityWindow(0.0, 1.0))).tolist() == [[255, 0], [0, 255]]


def test_wide_integers_keep_their_precision():
    """uint64 and int64 counts near 2**40 are windowed in float64: in float32 they were one grey."""
    for dtype in (np.uint64, np.int64):
        image = np.array([[0, 500, 1000]], dtype) + dtype(2**40)
        out = gray(to_rgb(image, IntensityWindow(2.0**40, 2.0**40 + 1000)))
        assert out.tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "object", "U2", "S2", "datetime64[s]", "timedelta64[s]"])
def test_dtypes_without_intensities_are_refused_by_name(dtype):
    image = np.zeros((3, 3), dtype)
    with pytest.raises(rwth_sam.InputError, match=r"cannot segment an image of dtype .*bool, integer or float"):
        to_rgb(image, IntensityWindow(0.0, 1.0))
    with pytest.raises(rwth_sam.InputError, match="cannot segment an image of dtype"):
        IntensityWindow.percentiles(image)


def test_float32_nan_is_black_and_infinities_clip():
    image = np.array([[np.nan, 0.0, 0.5], [1.0, np.inf, -np.inf]], dtype=np.float32)
    original = image.copy()
    out = gray(to_rgb(image, IntensityWindow(0.0, 1.0)))
    assert out.tolist() == [[0, 0, 128], [255, 255, 0]]
    assert np.array_equal(image, original, equal_nan=True)  # NaN not overwritten in the input


def test_all_nan_slice_is_an_input_error():
    image = np.full((5, 5), np.nan, dtype=np.float32)
    with pytest.raises(rwth_sam.InputError, match="only NaN"):
        to_rgb(image, IntensityWindow(0.0, 1.0))


def test_slices_must_be_2d():
    with pytest.raises(rwth_sam.InputError, match="2D"):
        to_rgb(np.zeros((2, 3, 4), np.uint8), None)


# --------------------------------------------------------------------------- percentiles over the volume


def volume_with_different_slice_ranges() -> np.ndarray:
    """Slice 0 spans 0..100, slice 1 spans 0..1000: a per-slice window would brighten slice 0."""
    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    return np.stack([ramp * 100, ramp * 1000]).astype(np.float32)


def test_percentile_window_is_computed_over_the_whole_volume():
    volume = volume_with_different_slice_ranges()
    window = IntensityWindow.percentiles(volume, 0.0, 100.0)
    assert (window.low, window.high) == (0.0, 1000.0)
    default = IntensityWindow.percentiles(volume)
    assert default.low == pytest.approx(np.percentile(volume, 0.5))
    assert default.high == pytest.approx(np.percentile(volume, 99.5))
    # slice-wise percentiles would be a different, much narrower window for slice 0
    assert IntensityWindow.percentiles(volume[0]).high < default.high / 5


def test_percentiles_ignore_nan_and_refuse_all_nan():
    volume = volume_with_different_slice_ranges()
    volume[0, :4] = np.nan
    window = IntensityWindow.percentiles(volume, 0.0, 100.0)
    assert (window.low, window.high) == (0.0, 1000.0)
    with pytest.raises(rwth_sam.InputError, match="no finite values"):
        IntensityWindow.percentiles(np.full((2, 3, 3), np.nan))


def test_percentiles_of_a_constant_volume_still_make_a_window():
    window = IntensityWindow.percentiles(np.full((3, 4, 4), 7, np.int16))
    assert window.low == 7.0 and window.high > window.low
    huge = IntensityWindow.percentiles(np.full((3, 4, 4), 2**63 + 5, np.uint64))  # there lo + 1.0 == lo
    assert huge.high > huge.low


def test_percentiles_of_a_bool_volume():
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 2:6, 2:6] = True
    assert IntensityWindow.percentiles(mask) == IntensityWindow(0.0, 1.0)


def test_percentiles_sample_large_volumes():
    volume = np.arange(1_000_000, dtype=np.float32).reshape(100, 100, 100)
    window = IntensityWindow.percentiles(volume, 0.0, 100.0, max_samples=1000)
    # sampled every 1000th voxel: the window still covers (nearly) the whole range
    assert window.low == 0.0 and window.high >= 999_000


class _NoPredictor:
    """Segmenter.slice_rgb never runs the predictor (it only names it in cache keys)."""

    name = "no model"


def test_segmenter_maps_all_slices_through_one_window():
    volume = volume_with_different_slice_ranges()
    original = volume.copy()
    segmenter = rwth_sam.Segmenter(_NoPredictor(), volume)
    window = segmenter.window
    assert window == IntensityWindow.percentiles(volume)

    first = gray(segmenter.slice_rgb(segmenter.plane(0, 0)))
    second = gray(segmenter.slice_rgb(segmenter.plane(0, 1)))
    assert np.array_equal(first, gray(to_rgb(volume[0], window)))
    assert np.array_equal(second, gray(to_rgb(volume[1], window)))
    # the dim slice stays dim: its brightest pixel (100) is about a tenth of the way up
    assert first.max() <= 30
    assert second.max() == 255
    # equal values give equal grey levels in both slices
    value = 50.0
    i0 = np.unravel_index(np.argmin(abs(volume[0] - value)), volume[0].shape)
    i1 = np.unravel_index(np.argmin(abs(volume[1] - value)), volume[1].shape)
    assert abs(int(first[i0]) - int(second[i1])) <= 1
    assert np.array_equal(volume, original)


def test_segmenter_uses_uint8_as_it_is_and_an_explicit_window_when_given():
    volume = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    segmenter = rwth_sam.Segmenter(_NoPredictor(), volume)
    assert segmenter.window is None
    assert np.array_equal(gray(segmenter.slice_rgb(segmenter.plane(0, 1))), volume[1])

    hu = np.full((2, 4, 5), 240, np.int16)
    soft = IntensityWindow.ct_preset("CT soft tissue")
    segmenter = rwth_sam.Segmenter(_NoPredictor(), hu, window=soft)
    assert segmenter.window is soft
    assert gray(segmenter.slice_rgb(segmenter.plane(0, 0))).min() == 255


# --------------------------------------------------------------------------- colour images


def test_rgb_uint8_passes_through_unchanged(rng):
    image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    original = image.copy()
    out = to_rgb(image, IntensityWindow(50.0, 60.0), rgb=True)  # the window does not apply to uint8 colour
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    assert np.array_equal(out, original)
    assert np.array_equal(image, original)
    assert np.array_equal(to_rgb(image, None, rgb=True), original)


def test_rgba_drops_alpha(rng):
    image = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    original = image.copy()
    out = to_rgb(image, None, rgb=True)
    assert out.shape == (5, 4, 3) and out.flags.c_contiguous
    assert np.array_equal(out, image[..., :3])
    assert np.array_equal(image, original)


def test_float_rgb_is_windowed_per_channel():
    image = np.zeros((2, 2, 3), np.float32)
    image[..., 0] = 0.0
    image[..., 1] = 0.5
    image[..., 2] = 2.0
    out = to_rgb(image, IntensityWindow(0.0, 1.0), rgb=True)
    assert out[0, 0].tolist() == [0, 128, 255]


def test_colour_slices_need_three_or_four_channels():
    with pytest.raises(rwth_sam.InputError, match="colour slice"):
        to_rgb(np.zeros((4, 4, 2), np.uint8), None, rgb=True)
    with pytest.raises(rwth_sam.InputError, match="colour slice"):
        to_rgb(np.zeros((4, 4), np.uint8), None, rgb=True)


@pytest.mark.parametrize(
    "image, window",
    [
        (np.array([[0, 100], [200, 255]], np.uint8), None),
        (np.array([[-1000, 0], [40, 3000]], np.int16), IntensityWindow(-160.0, 240.0)),
        (np.array([[0, 5000], [100, 65535]], np.uint16), IntensityWindow(0.0, 4095.0)),
        (np.array([[np.nan, 0.2], [np.inf, -3.0]], np.float32), IntensityWindow(0.0, 1.0)),
        (np.array([[0.2, 0.4], [0.6, 0.8]], np.float64), IntensityWindow(0.0, 1.0)),
    ],
)
def test_input_is_never_modified(image, window):
    original = image.copy()
    out = to_rgb(image, window)
    assert not np.shares_memory(out, image)
    out[...] = 7
    assert np.array_equal(image, original, equal_nan=True)


# --------------------------------------------------------------------------- the widget's window choices


def test_resolve_window_choices():
    from rwth_sam.core.preprocessing import CONTRAST_LIMITS, PERCENTILES, WINDOW_CHOICES, resolve_window

    volume = volume_with_different_slice_ranges()
    assert set(CT_WINDOWS) <= set(WINDOW_CHOICES)
    assert resolve_window(CONTRAST_LIMITS, volume, contrast_limits=(10, 90)) == IntensityWindow(10.0, 90.0)
    assert resolve_window(PERCENTILES, volume) == IntensityWindow.percentiles(volume)
    assert resolve_window("CT soft tissue", volume) == IntensityWindow(-160.0, 240.0)
    with pytest.raises(rwth_sam.InputError, match="contrast limits"):
        resolve_window(CONTRAST_LIMITS, volume)
    with pytest.raises(rwth_sam.InputError, match="low < high"):
        resolve_window(CONTRAST_LIMITS, volume, contrast_limits=(5, 5))
    # uint8 colour passes through whatever is chosen; other colour images get a window
    colour = np.zeros((4, 4, 3), np.uint8)
    assert resolve_window(CONTRAST_LIMITS, colour, contrast_limits=(0, 255), rgb=True) is None
    assert resolve_window(
        CONTRAST_LIMITS, colour.astype(np.float32), contrast_limits=(0, 1), rgb=True
    ) == IntensityWindow(0.0, 1.0)


def test_percentiles_of_a_lazy_volume_read_only_sampled_slices(tmp_path):
    zarr = pytest.importorskip("zarr")
    from rwth_sam.core.preprocessing import SAMPLED_SLICES

    from conftest import CountingVolume

    volume = np.random.default_rng(0).normal(1000, 200, (200, 24, 24)).astype(np.float32)
    volume[150:] += 500  # the upper part is brighter: a window from the first slices alone would miss it
    stored = zarr.open_array(tmp_path / "volume.zarr", mode="w", shape=volume.shape, chunks=(1, 24, 24), dtype="f4")
    stored[...] = volume
    counting = CountingVolume(stored)
    window = IntensityWindow.percentiles(counting)
    assert len(counting.keys) <= SAMPLED_SLICES and all(isinstance(key, int) for key in counting.keys)
    assert window.low == pytest.approx(np.percentile(volume, 0.5), rel=0.05)
    assert window.high == pytest.approx(np.percentile(volume, 99.5), rel=0.05)
