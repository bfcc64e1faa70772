"""Bad input and faults, without Qt: what rwth-sam refuses, with a message that says what is wrong,
and what it segments as it should (issue 9's catalogue: images, prompts, checkpoints, models, devices).

The image cases compare what the encoder sees (``Segmenter.slice_rgb``) where the same RGB slice
gives the same mask by construction; lazy arrays and single-slice stacks are run through the model.
"""

from __future__ import annotations

import argparse
import os
import pickle

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

import rwth_sam
from rwth_sam import InputError, Segmenter, SlicePlane, WeightsError
from rwth_sam.core.embeddings.segmenter import spatial_shape
from rwth_sam.core.models.device import available_devices, resolve_device
from rwth_sam.core.models.loading import load_weights

from conftest import SAM2_TINY_256

HEIGHT, WIDTH = 48, 64
CENTRE = (32, 24)  # (x, y) of the disc's centre


def disc(background=0, foreground=1) -> np.ndarray:
    """A (48, 64) image: a disc of ``foreground`` on ``background`` (float64, cast by the caller)."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    inside = (x - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 < 14**2
    return np.where(inside, float(foreground), float(background))


DISC_RGB = np.repeat(disc(0, 255).astype(np.uint8)[..., None], 3, axis=2)  # what the encoder must see


def assert_refused(error_type, words, call, *args, **kwargs) -> str:
    """``call`` raises ``error_type`` whose message holds every one of ``words``; returns the message."""
    with pytest.raises(error_type) as info:
        call(*args, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- images rwth-sam cannot segment

REFUSED_IMAGES = [
    ("1D", np.zeros(10, np.uint8), False, ["1 spatial dimensions"]),
    ("0D", np.array(5, np.uint8), False, ["0 spatial dimensions"]),
    ("4D", np.zeros((2, 3, 8, 8), np.uint8), False, ["4 spatial dimensions", "time point or channel"]),
    ("5D", np.zeros((1, 2, 3, 8, 8), np.uint8), False, ["5 spatial dimensions"]),
    ("4D colour", np.zeros((2, 3, 8, 8, 3), np.uint8), True, ["colour image has 4 spatial dimensions"]),
    ("empty", np.zeros((0, 0), np.uint8), False, ["(0, 0)", "empty"]),
    ("zero-size axis 2D", np.zeros((8, 0), np.uint8), False, ["(8, 0)", "empty"]),
    ("zero-size axis 3D", np.zeros((0, 8, 8), np.float32), False, ["(0, 8, 8)", "empty"]),
    ("1x1", np.zeros((1, 1), np.uint8), False, ["(1, 1)", "too small"]),
    ("1xN", np.zeros((1, 5000), np.uint8), False, ["(1, 5000)", "too small"]),
    ("Nx1", np.zeros((5000, 1), np.uint8), False, ["(5000, 1)", "too small"]),
    ("1x1xN volume", np.zeros((1, 1, 50), np.uint8), False, ["(1, 1, 50)", "no slice of it is 2x2"]),
    ("complex64", np.ones((8, 8), np.complex64), False, ["dtype complex64", "complex numbers", "np.abs"]),
    ("complex128 volume", np.ones((2, 8, 8), np.complex128), False, ["dtype complex128"]),
    ("object", np.ones((8, 8), object), False, ["dtype object", "Python objects"]),
    ("str", np.full((8, 8), "7"), False, ["dtype <U1", "text"]),
    ("bytes", np.full((8, 8), b"7"), False, ["dtype |S1", "bytes"]),
    ("structured", np.zeros((8, 8), [("value", "u2"), ("mask", "?")]), False, ["records", "fields"]),
    ("datetime64", np.zeros((8, 8), "datetime64[s]"), False, ["dtype datetime64[s]", "dates"]),
    ("timedelta64", np.zeros((8, 8), "timedelta64[ms]"), False, ["dtype timedelta64[ms]", "time spans"]),
    ("rgb flag on 2D", np.zeros((8, 8), np.uint8), True, ["3 or 4 channels", "(8, 8)"]),
    ("rgb with 2 channels", np.zeros((8, 8, 2), np.uint8), True, ["3 or 4 channels", "(8, 8, 2)"]),
    ("rgb with 5 channels", np.zeros((8, 8, 5), np.uint8), True, ["3 or 4 channels", "(8, 8, 5)"]),
    ("complex rgb", np.zeros((8, 8, 3), np.complex64), True, ["dtype complex64"]),
    ("python list", [[0, 1], [2, 3]], False, ["not a list", "use np.asarray"]),
]


@pytest.mark.parametrize("image, rgb, words", [c[1:] for c in REFUSED_IMAGES], ids=[c[0] for c in REFUSED_IMAGES])
def test_images_that_cannot_be_segmented_are_refused_by_name(sam2_tiny, image, rgb, words):
    """The widget's check (``spatial_shape``) and the Python API (``Segmenter``) refuse alike."""
    assert_refused(InputError, words, spatial_shape, image, rgb)
    assert_refused(InputError, words, Segmenter, sam2_tiny, image, rgb=rgb)


@pytest.mark.parametrize("dtype", ["complex64", "object", "U3", "datetime64[D]"])
def test_the_intensity_window_refuses_them_too(dtype):
    image = np.zeros((8, 8), dtype)
    assert_refused(InputError, [f"dtype {np.dtype(dtype)}"], rwth_sam.IntensityWindow.percentiles, image)
    assert_refused(InputError, [f"dtype {np.dtype(dtype)}"], rwth_sam.to_rgb, image, rwth_sam.IntensityWindow(0, 1))


# --------------------------------------------------------------------------- every intensity dtype works

WORKING_DTYPES = [
    ("bool", lambda: disc(False, True).astype(bool)),
    ("uint8 (used as it is)", lambda: disc(0, 255).astype(np.uint8)),
    ("int8", lambda: disc(-100, 100).astype(np.int8)),
    ("uint16", lambda: disc(1000, 60000).astype(np.uint16)),
    ("int16 HU", lambda: disc(-1000, 400).astype(np.int16)),
    ("uint32", lambda: disc(7, 4_000_000_000).astype(np.uint32)),
    ("int32", lambda: disc(-2_000_000_000, 2_000_000_000).astype(np.int32)),
    ("int64", lambda: disc(-(2**40), -(2**40) + 1000).astype(np.int64)),
    ("uint64 large values", lambda: np.uint64(2**40) + disc(0, 1000).astype(np.uint64)),
    ("float16", lambda: disc(0.25, 0.75).astype(np.float16)),
    ("float32", lambda: disc(-1.5, 3.5).astype(np.float32)),
    ("float64", lambda: disc(1e-9, 2e-9)),
    ("big-endian >u2", lambda: disc(100, 4000).astype(">u2")),
    ("big-endian >f8", lambda: disc(-3.0, 3.0).astype(">f8")),
]


@pytest.mark.parametrize("make", [c[1] for c in WORKING_DTYPES], ids=[c[0] for c in WORKING_DTYPES])
def test_every_intensity_dtype_shows_the_model_the_same_slice(sam2_tiny, make):
    """Percentile windowing maps the disc's two values to black and white, whatever the dtype: wide
    integers (uint64 counts near 2**40) keep their precision rather than collapsing to one grey."""
    image = make()
    segmenter = Segmenter(sam2_tiny, image)
    assert np.array_equal(segmenter.slice_rgb(segmenter.plane()), DISC_RGB)


def test_a_constant_uint64_image_beyond_float_precision_gets_a_window(sam2_tiny):
    image = np.full((HEIGHT, WIDTH), 2**63 + 5, np.uint64)  # lo + 1.0 == lo in float64 here
    segmenter = Segmenter(sam2_tiny, image)
    assert segmenter.window.low < segmenter.window.high
    assert np.array_equal(segmenter.slice_rgb(segmenter.plane()), np.zeros((HEIGHT, WIDTH, 3), np.uint8))


# --------------------------------------------------------------------------- NaN, infinities, constant images

NON_FINITE = [
    ("some NaN in the background", lambda image: _set(image, (slice(0, 5), slice(None)), np.nan)),
    ("+inf in the disc, -inf outside", lambda image: _set(_set(image, CENTRE[::-1], np.inf), (0, 0), -np.inf)),
]


def _set(image, index, value):
    image[index] = value
    return image


@pytest.mark.parametrize("spoil", [c[1] for c in NON_FINITE], ids=[c[0] for c in NON_FINITE])
def test_nan_is_black_and_infinities_clip_to_the_window_ends(sam2_tiny, spoil):
    image = spoil(disc(10.0, 20.0).astype(np.float32))
    segmenter = Segmenter(sam2_tiny, image)
    assert (segmenter.window.low, segmenter.window.high) == (10.0, 20.0)  # from the finite values only
    assert np.array_equal(segmenter.slice_rgb(segmenter.plane()), DISC_RGB)


def test_an_all_nan_slice_is_refused_and_the_others_segment(sam2_tiny):
    volume = np.stack([disc(10.0, 20.0)] * 3).astype(np.float32)
    volume[1] = np.nan
    segmenter = Segmenter(sam2_tiny, volume)
    assert_refused(InputError, ["only NaN"], segmenter.predict, segmenter.plane(0, 1), points=[CENTRE])
    assert len(segmenter.cache) == 0
    assert np.array_equal(segmenter.slice_rgb(segmenter.plane(0, 2)), DISC_RGB)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["all NaN", "all +inf", "all -inf"])
def test_an_image_without_finite_values_is_refused(sam2_tiny, value):
    assert_refused(InputError, ["no finite values"], Segmenter, sam2_tiny, np.full((4, 8, 8), value, np.float32))


def test_a_constant_image_segments(sam2_tiny):
    segmenter = Segmenter(sam2_tiny, np.full((HEIGHT, WIDTH), 500, np.uint16))
    prediction = segmenter.predict(segmenter.plane(), points=[CENTRE])
    assert prediction.mask.shape == (HEIGHT, WIDTH) and prediction.mask.dtype == bool


# --------------------------------------------------------------------------- tiny, sliver and single-slice images


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 5000)], ids=["2x2", "3x3", "2x5000 sliver"])
def test_tiny_and_sliver_images_segment(sam2_tiny, shape):
    image = np.zeros(shape, np.uint8)
    image[:, : shape[1] // 2] = 200
    segmenter = Segmenter(sam2_tiny, image)
    prediction = segmenter.predict(segmenter.plane(), points=[(0, 0)])
    assert prediction.mask.shape == shape


def test_a_sliver_too_thin_for_sam_s_resize_is_refused_before_encoding(mobile_sam):
    """SAM, SAM-HQ and MobileSAM scale the long side to 1024 px: a 2x5000 slice would be 0 px high."""
    segmenter = Segmenter(mobile_sam, np.zeros((2, 5000), np.uint8))
    words = ["2x5000", "too elongated", "SAM 2"]
    assert_refused(InputError, words, segmenter.predict, segmenter.plane(), points=[(10, 0)])
    assert len(segmenter.cache) == 0


def test_a_single_slice_stack_segments_like_its_slice(sam2_tiny):
    """One TIFF page saved as a stack, or a volume cropped to one slice: (1, H, W) is a volume."""
    image = disc(0, 200).astype(np.uint8)
    stack = image[None]
    assert spatial_shape(stack, False) == (1, HEIGHT, WIDTH)
    alone = Segmenter(sam2_tiny, image).predict(SlicePlane.of(image.shape), points=[CENTRE])
    segmenter = Segmenter(sam2_tiny, stack)
    in_stack = segmenter.predict(segmenter.plane(0, 0), points=[CENTRE])
    assert np.array_equal(in_stack.mask, alone.mask) and np.array_equal(in_stack.logits, alone.logits)
    labels = np.zeros(stack.shape, np.uint32)
    segmenter.plane(0, 0).write(labels, in_stack.mask, value=3)
    assert np.array_equal(labels[0] == 3, alone.mask)


def test_a_single_slice_colour_stack_is_a_volume(sam2_tiny, rng):
    colour = rng.integers(0, 256, (1, HEIGHT, WIDTH, 4), dtype=np.uint8)  # RGBA: alpha is dropped
    assert spatial_shape(colour, True) == (1, HEIGHT, WIDTH)
    segmenter = Segmenter(sam2_tiny, colour, rgb=True)
    assert np.array_equal(segmenter.slice_rgb(segmenter.plane(0, 0)), colour[0, ..., :3])


THIN_SLICES = [
    ("stack seen side on (rows)", (1, HEIGHT, WIDTH), SlicePlane((1, HEIGHT, WIDTH), 0, 2, 1, 5), "1x64"),
    ("stack seen side on (columns)", (1, HEIGHT, WIDTH), SlicePlane((1, HEIGHT, WIDTH), 0, 1, 2, 5), "1x48"),
    ("stack side on, transposed", (1, HEIGHT, WIDTH), SlicePlane((1, HEIGHT, WIDTH), 2, 0, 1, 5), "64x1"),
    ("volume of 1-pixel-wide slices", (HEIGHT, WIDTH, 1), SlicePlane((HEIGHT, WIDTH, 1), 1, 2, 0, 5), "64x1"),
]


@pytest.mark.parametrize("shape, plane, size", [c[1:] for c in THIN_SLICES], ids=[c[0] for c in THIN_SLICES])
def test_a_slice_a_pixel_thin_is_refused_where_it_is_shown(sam2_tiny, shape, plane, size):
    segmenter = Segmenter(sam2_tiny, np.zeros(shape, np.uint8))
    words = ["slice shown", f"along axis {plane.axis}", "too small", "another axis"]
    assert_refused(InputError, [*words, f"is {size} pixels"], segmenter.predict, plane, points=[(0, 0)])
    assert_refused(InputError, [*words, f"is {size} pixels"], segmenter.prefetch, plane)
    assert_refused(InputError, words, segmenter.plane, plane.axis, plane.index)  # rows and columns in array order
    assert len(segmenter.cache) == 0


# --------------------------------------------------------------------------- lazy arrays and memory layouts


@pytest.fixture(scope="module")
def volume():
    noise = np.random.default_rng(3).normal(0, 300, (3, HEIGHT, WIDTH))
    return np.clip(disc(1000, 9000)[None] + noise, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def numpy_prediction(sam2_tiny, volume):
    segmenter = Segmenter(sam2_tiny, volume)
    return segmenter.window, segmenter.predict(segmenter.plane(0, 1), points=[CENTRE])


LAZY = [
    ("dask", lambda v: da.from_array(v, chunks=(1, 16, 32))),
    ("zarr", lambda v: zarr.array(v, chunks=(1, 16, 32))),
]


@pytest.mark.parametrize("lazy", [c[1] for c in LAZY], ids=[c[0] for c in LAZY])
def test_lazy_arrays_give_the_numpy_array_s_mask(sam2_tiny, volume, numpy_prediction, lazy):
    window, expected = numpy_prediction
    segmenter = Segmenter(sam2_tiny, lazy(volume))
    assert segmenter.window == window
    prediction = segmenter.predict(segmenter.plane(0, 1), points=[CENTRE])
    assert np.array_equal(prediction.mask, expected.mask) and np.array_equal(prediction.scores, expected.scores)


def _strided(volume):
    padded = np.zeros((3, 2 * HEIGHT, 2 * WIDTH), volume.dtype)
    padded[:, ::2, ::2] = volume
    return padded[:, ::2, ::2]


def _read_only(volume):
    copy = volume.copy()
    copy.flags.writeable = False
    return copy


LAYOUTS = [
    ("negative strides", lambda v: np.flip(np.flip(v, (1, 2)).copy(), (1, 2))),
    ("non-contiguous view", _strided),
    ("Fortran order", np.asfortranarray),
    ("read-only", _read_only),
    ("big-endian >u2", lambda v: v.astype(">u2")),
]


@pytest.mark.parametrize("layout", [c[1] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_memory_layouts_show_the_model_the_same_slices(sam2_tiny, volume, layout):
    arranged = layout(volume)
    assert np.array_equal(arranged, volume)
    reference, segmenter = Segmenter(sam2_tiny, volume), Segmenter(sam2_tiny, arranged)
    assert segmenter.window == reference.window
    for plane in (segmenter.plane(0, 1), segmenter.plane(1, 20), SlicePlane(volume.shape, 2, 1, 0, 2)):
        assert np.array_equal(segmenter.slice_rgb(plane), reference.slice_rgb(plane))


# --------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def disc_segmenter(sam2_tiny):
    """One segmenter on the disc image for the prompts that work (its slice is embedded once)."""
    return Segmenter(sam2_tiny, disc(0, 200).astype(np.uint8))


REFUSED_PROMPTS = [
    ("point right of the slice", dict(points=[(64, 10)]), ["(64.0, 10.0)", "outside the 64x48 slice"]),
    ("point above the slice", dict(points=[(10, -1)]), ["outside"]),
    ("NaN point", dict(points=[(np.nan, 10)]), ["finite"]),
    ("inf point", dict(points=[(10, np.inf)]), ["finite"]),
    ("odd number of coordinates", dict(points=[1, 2, 3]), ["(x, y) pairs", "3 numbers"]),
    ("text coordinates", dict(points=[("left", 3)]), ["Points must be numbers"]),
    ("fewer labels than points", dict(points=[(1, 2), (3, 4)], labels=[1]), ["2 points but 1 labels"]),
    ("more labels than points", dict(points=[(1, 2)], labels=[1, 0, 1]), ["1 points but 3 labels"]),
    ("label 2", dict(points=[(1, 2)], labels=[2]), ["1 (positive) or 0 (negative)"]),
    ("label -1", dict(points=[(1, 2)], labels=[-1]), ["1 (positive) or 0 (negative)"]),
    ("label 0.5", dict(points=[(1, 2)], labels=[0.5]), ["1 (positive) or 0 (negative)"]),
    ("no points and no box", dict(points=[], labels=[]), ["Add a point or a box"]),
    ("only mask logits", dict(mask_logits=np.zeros((64, 64))), ["Add a point or a box"]),
    ("box of three numbers", dict(box=(1, 2, 3)), ["(x0, y0, x1, y1)"]),
    ("NaN box", dict(box=(1, 2, np.nan, 9)), ["finite"]),
    ("text box", dict(box="a box"), ["A box must be numbers"]),
    ("box right of the slice", dict(box=(70, 5, 90, 20)), ["box (70.0, 5.0, 90.0, 20.0)", "outside the 64x48"]),
    ("box above the slice", dict(box=(5, -30, 20, -1)), ["outside"]),
    ("mask logits of another model", dict(points=[CENTRE], mask_logits=np.zeros((256, 256))), ["64x64", "256x256"]),
    (
        "two masks of logits",
        dict(points=[CENTRE], mask_logits=np.zeros((2, 64, 64))),
        ["low-resolution mask", "not (2, 64, 64)"],
    ),
    ("1D mask logits", dict(points=[CENTRE], mask_logits=np.zeros(64)), ["one low-resolution mask", "not (64,)"]),
    ("NaN mask logits", dict(points=[CENTRE], mask_logits=np.full((64, 64), np.nan)), ["Mask logits must be finite"]),
]


@pytest.mark.parametrize("prompts, words", [c[1:] for c in REFUSED_PROMPTS], ids=[c[0] for c in REFUSED_PROMPTS])
def test_bad_prompts_are_refused_before_the_encoder_runs(sam2_tiny, prompts, words):
    segmenter = Segmenter(sam2_tiny, disc(0, 200).astype(np.uint8))
    assert_refused(InputError, words, segmenter.predict, segmenter.plane(), **prompts)
    assert len(segmenter.cache) == 0


def test_the_predictor_itself_refuses_mask_logits_of_another_size(disc_segmenter):
    embedding = disc_segmenter.embed(disc_segmenter.plane())
    prompts = rwth_sam.Prompts.make(points=[CENTRE], mask_logits=np.zeros((256, 256)))
    assert_refused(InputError, ["64x64"], disc_segmenter.predictor.predict, embedding, prompts)


def test_an_inverted_box_is_the_same_box(disc_segmenter):
    plane = disc_segmenter.plane()
    upright = disc_segmenter.predict(plane, box=(18, 10, 46, 38))
    for inverted in ((46, 38, 18, 10), (46, 10, 18, 38)):
        prediction = disc_segmenter.predict(plane, box=inverted)
        assert np.array_equal(prediction.mask, upright.mask) and np.array_equal(prediction.logits, upright.logits)


@pytest.mark.parametrize(
    "box", [(32, 10, 32, 38), (32, 24, 32, 24), (-20, -20, 40, 30)], ids=["zero width", "one point", "partly outside"]
)
def test_degenerate_and_partly_outside_boxes_segment(disc_segmenter, box):
    """Zero-area boxes are valid: in pixel centres, (x, y, x, y) is the box of one pixel (propagation
    makes them for thin objects)."""
    assert disc_segmenter.predict(disc_segmenter.plane(), box=box).mask.shape == (HEIGHT, WIDTH)


def test_bool_labels_and_a_flat_point_are_the_ordinary_prompt(disc_segmenter):
    plane = disc_segmenter.plane()
    expected = disc_segmenter.predict(plane, points=[CENTRE], labels=[1])
    for points, labels in (([CENTRE], [True]), (CENTRE, None), (np.array([CENTRE], np.int64), np.array([1]))):
        assert np.array_equal(disc_segmenter.predict(plane, points=points, labels=labels).mask, expected.mask)


# --------------------------------------------------------------------------- checkpoints


class _RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


TINY_SPEC = rwth_sam.ModelSpec(name="tiny_test_net", family="test", title="Tiny test net", build=_tiny_net,
                               make_predictor=None)  # fmt: skip


def _save(state):
    def write(path, marker):
        torch.save(state if not callable(state) else state(marker), path)

    return write


def _write_bytes(data):
    return lambda path, marker: path.write_bytes(data)


def _truncated(path, marker):
    torch.save(_tiny_net().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])


def _edited(change):
    def state(marker):
        weights = {key: value + 1 for key, value in _tiny_net().state_dict().items()}  # not the module's values
        change(weights)
        return weights

    return _save(state)


BAD_CHECKPOINTS = [
    ("missing file", None, ["not found"]),
    ("a folder", lambda path, marker: path.mkdir(), ["is a folder"]),
    ("empty file", _write_bytes(b""), ["empty (0 bytes)"]),
    ("truncated", _truncated, ["truncated, corrupt"]),
    ("text file", _write_bytes(b"model weights: see the wiki\n"), ["truncated, corrupt", "not a PyTorch checkpoint"]),
    ("a bare tensor", _save(torch.zeros(3)), ["holds no model weights"]),
    ("an empty dict", _save({}), ["holds no model weights"]),
    ("keys that are not names", _save({0: torch.zeros(1)}), ["not a state dict", "0 is not the name"]),
    ("a missing weight", _edited(lambda w: w.pop("1.bias")), ["does not fit Tiny test net", "1 missing", "1.bias"]),
    ("an extra weight", _edited(lambda w: w.update(extra=torch.ones(1))), ["0 missing and 1 unexpected", "extra"]),
    ("a weight of another shape", _edited(lambda w: w.update({"0.weight": torch.ones(4, 3, 5, 5)})),
     ["1 of its weights have another shape", "0.weight: shape (4, 3, 5, 5) in the file, shape (4, 3, 3, 3)"]),
    ("a number for a weight", _edited(lambda w: w.update({"0.bias": 3})), ["0.bias: the int 3 in the file, shape (4,) in the model"]),
    ("code run as it is opened", _save(lambda marker: {"model": _tiny_net().state_dict(), "hook": _RunsCode(marker)}),
     ["was not opened", ".system)", "can run code", "torch.save(model.state_dict(), path)"]),
    ("a bare pickle that runs code", lambda path, marker: path.write_bytes(pickle.dumps(_RunsCode(marker))),
     ["not a PyTorch checkpoint"]),
    ("a training script's arguments", _save({"model": _tiny_net().state_dict(), "args": argparse.Namespace(lr=1)}),
     ["was not opened", "argparse.Namespace"]),
]  # fmt: skip


@pytest.mark.parametrize("write, words", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoints_are_refused_and_change_nothing(tmp_path, write, words):
    path, marker = tmp_path / "weights.pt", tmp_path / "code-ran"
    if write is not None:
        write(path, marker)
    module = _tiny_net()
    before = {key: value.clone() for key, value in module.state_dict().items()}
    message = assert_refused(WeightsError, words, load_weights, module, TINY_SPEC, path)
    assert str(path) in message and "\n" not in message
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert all(torch.equal(value, before[key]) for key, value in module.state_dict().items())


def test_a_checkpoint_that_fits_loads(tmp_path):
    path = tmp_path / "weights.pt"
    source = _tiny_net()
    torch.nn.init.constant_(source[0].weight, 0.5)
    torch.save({"model": source.state_dict()}, path)
    module = _tiny_net()
    load_weights(module, TINY_SPEC, path)
    assert torch.equal(module[0].weight, source[0].weight)


def test_a_malicious_checkpoint_never_runs_through_load_model(tmp_path):
    path, marker = tmp_path / "sam2.pt", tmp_path / "code-ran"
    torch.save({"model": {"image_encoder.weight": torch.zeros(1)}, "hook": _RunsCode(marker)}, path)
    assert_refused(WeightsError, ["was not opened"], rwth_sam.load_model, SAM2_TINY_256, checkpoint=path, device="cpu")
    assert not marker.exists()


def test_a_mobile_sam_checkpoint_does_not_fit_sam2(mobile_sam_checkpoint):
    words = ["does not fit SAM 2.1 Hiera-T", "471 missing and 439 unexpected", "Pick the checkpoint made"]
    assert_refused(WeightsError, words, rwth_sam.load_model, "sam2.1_hiera_tiny", checkpoint=mobile_sam_checkpoint)


def test_a_sam2_checkpoint_does_not_fit_mobile_sam(checkpoint):
    words = ["does not fit MobileSAM ViT-T", "missing", "unexpected"]
    assert_refused(WeightsError, words, rwth_sam.load_model, "mobile_sam_vit_t", checkpoint=checkpoint, device="cpu")


# --------------------------------------------------------------------------- models and devices


@pytest.mark.parametrize("name", ["mobile_sam", "SAM2.1_HIERA_TINY", "", None])
def test_unknown_model_names_list_the_known_ones(name):
    assert_refused(InputError, ["Unknown model", "mobile_sam_vit_t", "sam2.1_hiera_tiny"], rwth_sam.load_model, name)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", 3.5])
def test_unknown_devices_list_the_available_ones(device):
    assert_refused(InputError, ["Unknown device", "cpu"], rwth_sam.load_model, SAM2_TINY_256, device=device)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_refused(device):
    if device in available_devices():
        pytest.skip(f"{device} is available here")
    assert_refused(InputError, [f"'{device}' is not available", "cpu"], resolve_device, device)
