"""Automatic mask generation: upstream's generators with every setting, label images, 3D linking."""

from __future__ import annotations

import warnings
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from rwth_sam.core.embeddings.segmenter import Segmenter
from rwth_sam.core.errors import InputError
from rwth_sam.core.tasks.automatic import (
    HIGHEST,
    LOWEST,
    MAX_PROMPT_POINTS,
    SETTING_HELP,
    AutomaticSettings,
    VolumeResult,
    Workload,
    cached_generator,
    compact_labels,
    generate_slice,
    generate_volume,
    link_slices,
    make_generator,
    paint_masks,
    run_generator,
)

from conftest import SAM2_TINY_256, random_model


def _upstream_generator_class(package: str, name: str):
    return lambda: getattr(__import__(f"{package}.automatic_mask_generator", fromlist=[name]), name)


UPSTREAM_GENERATORS = {
    "mobile_sam_vit_t": _upstream_generator_class("mobile_sam", "SamAutomaticMaskGenerator"),
    "sam_hq_vit_tiny": _upstream_generator_class("segment_anything_hq", "SamAutomaticMaskGenerator"),
    SAM2_TINY_256: _upstream_generator_class("sam2", "SAM2AutomaticMaskGenerator"),
}

# Random weights predict low IoU and unstable masks: with the filters off and NMS at 1 every
# grid point's masks come out, so there is something to compare.
LOOSE = AutomaticSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
MIN_AREA = 30


def _image(height: int = 96, width: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    image = 60 + 40 * np.sin(cols / 7.0) * np.cos(rows / 9.0) + rng.normal(0, 25, (height, width))
    image[(rows - height * 0.4) ** 2 + (cols - width * 0.5) ** 2 < (min(height, width) / 5) ** 2] = 220
    return image.clip(0, 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2)


def _paint(annotations) -> np.ndarray:
    """The painting rule, from upstream's output dicts: largest first, ties in upstream order, ids 1..n."""
    order = sorted(range(len(annotations)), key=lambda i: -annotations[i]["area"])
    shape = annotations[0]["segmentation"].shape
    labels = np.zeros(shape, np.int64)
    for value, i in enumerate(order, start=1):
        labels[annotations[i]["segmentation"]] = value
    _, compact = np.unique(labels, return_inverse=True)
    return compact.reshape(shape) if (labels == 0).any() else compact.reshape(shape) + 1


def _small_parts(mask: np.ndarray, area: int) -> int:
    """Islands plus holes (8-connected) smaller than ``area``: what min_mask_region_area removes."""
    eight = np.ones((3, 3))
    count = 0
    for region in (mask, ~mask):
        labelled, _ = ndimage.label(region, eight)
        count += int((np.bincount(labelled.ravel())[1:] < area).sum())
    return count


def _masks(records) -> list[np.ndarray]:
    return [record["segmentation"] for record in records]


# ----------------------------------------------------------------------------------------------
# Against upstream, with models
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobile_runs():
    """MobileSAM with small-region removal: rwth-sam's labels, upstream's generate(), and the cv2 calls."""
    import cv2

    predictor = random_model("mobile_sam_vit_t")
    rgb = _rgb(_image())
    settings = replace(LOOSE, min_mask_region_area=MIN_AREA)
    calls = []
    original = cv2.connectedComponentsWithStats

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    cv2.connectedComponentsWithStats = spy
    try:
        ours = generate_slice(predictor, rgb, settings)
    finally:
        cv2.connectedComponentsWithStats = original
    upstream = make_generator(predictor, settings).generate(rgb)
    return ours, upstream, calls


@pytest.fixture(scope="module")
def sam2_runs():
    """SAM 2 (256 px) without and with small-region removal, and upstream's generate() without."""
    predictor = random_model(SAM2_TINY_256)
    rgb = _rgb(_image())
    ours = generate_slice(predictor, rgb, LOOSE)
    upstream = make_generator(predictor, LOOSE).generate(rgb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = make_generator(predictor, replace(LOOSE, min_mask_region_area=MIN_AREA))
        cleaned = run_generator(predictor, generator, rgb)
    return ours, upstream, cleaned, [str(w.message) for w in caught]


def test_mobile_sam_labels_equal_upstream_generate(mobile_runs):
    ours, upstream, _ = mobile_runs
    assert ours.dtype == np.int32 and ours.shape == (96, 96)
    assert len(upstream) > 5 and ours.max() > 5
    np.testing.assert_array_equal(ours, _paint(upstream))
    assert set(np.unique(ours)) - {0} == set(range(1, ours.max() + 1))  # ids 1..n, none skipped


def test_sam2_labels_equal_upstream_generate(sam2_runs):
    ours, upstream, _, _ = sam2_runs
    assert ours.dtype == np.int32 and ours.shape == (96, 96)
    assert len(upstream) > 5 and ours.max() > 5
    np.testing.assert_array_equal(ours, _paint(upstream))


def test_sam_hq_labels_equal_upstream_generate():
    predictor = random_model("sam_hq_vit_tiny")
    rgb = _rgb(_image(64, 80))
    settings = replace(LOOSE, points_per_side=3)
    upstream = make_generator(predictor, settings).generate(rgb)
    assert len(upstream) > 5
    np.testing.assert_array_equal(generate_slice(predictor, rgb, settings), _paint(upstream))


def test_crop_layers_equal_upstream_generate():
    predictor = random_model(SAM2_TINY_256)
    rgb = _rgb(_image(64, 80, seed=3))
    settings = replace(
        LOOSE, crop_n_layers=1, crop_nms_thresh=0.5, crop_overlap_ratio=0.2, crop_n_points_downscale_factor=2
    )
    upstream = make_generator(predictor, settings).generate(rgb)
    assert len(upstream) >= 1
    np.testing.assert_array_equal(generate_slice(predictor, rgb, settings), _paint(upstream))


def test_smaller_masks_are_painted_on_top(sam2_runs):
    ours, upstream, _, _ = sam2_runs
    smallest = min(upstream, key=lambda a: a["area"])["segmentation"]
    values = np.unique(ours[smallest])
    assert len(values) == 1 and values[0] == ours.max()  # painted last, never covered


def test_min_mask_region_area_removes_small_regions_with_opencv(mobile_runs, sam2_runs):
    _, upstream, calls = mobile_runs
    assert calls, "OpenCV's connected components never ran"
    assert all(_small_parts(a["segmentation"], MIN_AREA) == 0 for a in upstream)

    _, raw, cleaned, messages = sam2_runs
    assert sum(_small_parts(a["segmentation"], MIN_AREA) for a in raw) > 0  # there was something to remove
    masks = _masks(cleaned)
    assert masks and all(_small_parts(m, MIN_AREA) == 0 for m in masks)
    assert not [m for m in messages if "post-processing" in m]  # not SAM 2's CUDA-only path


def test_generate_slice_checks_its_image():
    predictor = random_model(SAM2_TINY_256)
    with pytest.raises(InputError, match="uint8"):
        generate_slice(predictor, np.zeros((32, 32), np.uint8), LOOSE)
    with pytest.raises(InputError, match="too small"):
        generate_slice(predictor, np.zeros((1, 32, 3), np.uint8), LOOSE)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

CHANGED = dict(
    points_per_side=6,
    points_per_batch=7,
    pred_iou_thresh=0.5,
    stability_score_thresh=0.6,
    stability_score_offset=0.8,
    box_nms_thresh=0.4,
    crop_n_layers=2,
    crop_nms_thresh=0.3,
    crop_overlap_ratio=0.25,
    crop_n_points_downscale_factor=2,
    min_mask_region_area=25,
)


def test_changed_values_cover_every_field_and_differ_from_defaults():
    assert set(CHANGED) == {f.name for f in fields(AutomaticSettings)}
    defaults = AutomaticSettings()
    assert all(getattr(defaults, name) != value for name, value in CHANGED.items())
    assert set(SETTING_HELP) == set(CHANGED) and all(len(text) > 40 for text in SETTING_HELP.values())


@pytest.mark.parametrize("name", ["mobile_sam_vit_t", "sam_hq_vit_tiny", SAM2_TINY_256])
@pytest.mark.parametrize("field_name", list(CHANGED))
def test_each_setting_reaches_the_generator(name, field_name):
    predictor = random_model(name)
    settings = AutomaticSettings(**{field_name: CHANGED[field_name]})
    generator = make_generator(predictor, settings)
    assert generator.predictor.model is predictor.model
    assert isinstance(generator, UPSTREAM_GENERATORS[name]())  # the model's own package's generator
    if field_name in ("points_per_side", "crop_n_layers", "crop_n_points_downscale_factor"):
        side = settings.points_per_side
        grids = generator.point_grids
        assert len(grids) == settings.crop_n_layers + 1
        for layer, grid in enumerate(grids):
            per_side = int(side / settings.crop_n_points_downscale_factor**layer)
            assert grid.shape == (per_side**2, 2)
    if field_name != "points_per_side":
        assert getattr(generator, field_name) == CHANGED[field_name]


def test_all_settings_at_once_reach_the_generator():
    settings = AutomaticSettings(**CHANGED)
    generator = make_generator(random_model(SAM2_TINY_256), settings)
    assert [g.shape[0] for g in generator.point_grids] == [36, 9, 1]
    for name, value in CHANGED.items():
        if name != "points_per_side":
            assert getattr(generator, name) == value


def test_generate_slice_reuses_the_generator_while_settings_stay():
    predictor = random_model(SAM2_TINY_256)
    first = cached_generator(predictor, LOOSE)
    assert cached_generator(predictor, replace(LOOSE)) is first
    other = cached_generator(predictor, replace(LOOSE, points_per_batch=5))
    assert other is not first and other.points_per_batch == 5


def test_a_predictor_without_a_generator_says_so():
    from conftest import OraclePredictor

    oracle = OraclePredictor(torch.nn.Identity(), "oracle", torch.device("cpu"))
    assert not oracle.capabilities.mask_generator
    with pytest.raises(InputError, match=r"^oracle has no automatic mask generator\.$"):
        make_generator(oracle, LOOSE)
    with pytest.raises(InputError, match="oracle has no automatic mask generator"):
        generate_slice(oracle, _rgb(_image(32, 32)), LOOSE)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16])
def test_compact_labels_numbers_ids_in_order(dtype):
    labels = np.array([[0, 7, 7, 3], [12, 0, 3, 40]], dtype)
    compact = compact_labels(labels)
    assert compact.dtype == np.int32
    np.testing.assert_array_equal(compact, [[0, 2, 2, 1], [3, 0, 1, 4]])
    np.testing.assert_array_equal(compact_labels(compact), compact)
    np.testing.assert_array_equal(compact_labels(np.full((2, 2), 5, dtype)), np.ones((2, 2)))
    assert not compact_labels(np.zeros((2, 2), dtype)).any()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(points_per_side=0), "Points per side must be 1 or more"),
        (dict(points_per_side=2.5), "whole number"),
        (dict(points_per_batch=0), "Points per batch"),
        (dict(pred_iou_thresh=1.5), "Pred iou threshold must be between 0 and 1"),
        (dict(stability_score_thresh=-0.1), "Stability score threshold"),
        (dict(stability_score_offset=-1.0), "Stability score offset"),
        (dict(box_nms_thresh=float("nan")), "Box nms threshold must be a number"),
        (dict(crop_n_layers=-1), "Crop n layers"),
        (dict(crop_nms_thresh=2.0), "Crop nms threshold"),
        (dict(crop_overlap_ratio=1.0), "Crop overlap ratio"),
        (dict(crop_n_points_downscale_factor=0), "downscale factor must be 1 or more"),
        (dict(min_mask_region_area=-5), "Min mask region area"),
        (dict(min_mask_region_area=True), "whole number"),
        (dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2), "no points in crop layer 3"),
    ],
)
def test_invalid_settings_raise_input_error(changes, message):
    with pytest.raises(InputError, match=message):
        AutomaticSettings(**changes)


# The bad-input catalogue of the settings: each is refused with a message naming the setting, the
# value and the limit, before any model work.
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(points_per_side=1000), "Points per side must be 256 or less, not 1000"),
        (dict(points_per_side=257), "Points per side must be 256 or less, not 257"),
        (dict(points_per_side=100_000), "Points per side must be 256 or less, not 100000"),
        (dict(points_per_batch=0), "Points per batch must be 1 or more, not 0"),
        (dict(points_per_batch=5000), "Points per batch must be 1024 or less, not 5000"),
        (dict(crop_n_layers=5), "Crop n layers must be 3 or less, not 5"),
        (dict(crop_n_layers=4, crop_n_points_downscale_factor=2), "Crop n layers must be 3 or less, not 4"),
        (dict(crop_n_points_downscale_factor=300), "Crop n points downscale factor must be 256 or less, not 300"),
        (dict(points_per_side=256, crop_n_layers=3), "5,570,560 prompt points per slice .* limit of 524,288"),
        (dict(points_per_side=200, crop_n_layers=2), "840,000 prompt points per slice .* limit of 524,288"),
        (dict(pred_iou_thresh=float("nan")), "Pred iou threshold must be a number, not nan"),
        (dict(stability_score_offset=float("inf")), "Stability score offset must be a number, not inf"),
        (dict(crop_overlap_ratio=float("-inf")), "Crop overlap ratio must be a number"),
        (dict(points_per_side=float("nan")), "Points per side must be a whole number, not nan"),
        (dict(points_per_side="32"), "Points per side must be a whole number, not '32'"),
        (dict(points_per_batch=None), "Points per batch must be a whole number, not None"),
        (dict(box_nms_thresh="0.5"), "Box nms threshold must be a number"),
    ],
)  # fmt: skip
def test_huge_and_bad_settings_are_refused_with_the_limit(changes, message):
    with pytest.raises(InputError, match=message):
        AutomaticSettings(**changes)


@pytest.mark.parametrize(
    "changes, points",
    [
        (dict(), 1024),
        (dict(points_per_side=256), 65_536),
        (dict(points_per_side=128, crop_n_layers=2), 344_064),  # the densest setting in use
        (dict(points_per_side=256, crop_n_layers=3, crop_n_points_downscale_factor=2), 262_144),
        (dict(points_per_side=np.int64(64), points_per_batch=np.int32(1024), crop_n_layers=np.int8(1)), 20_480),
    ],
)
def test_settings_up_to_the_limits_are_accepted(changes, points):
    settings = AutomaticSettings(**changes)
    assert settings.workload().points == points <= MAX_PROMPT_POINTS


def test_the_limits_cover_the_integer_settings_and_hold_the_defaults():
    defaults = AutomaticSettings()
    integers = {f.name for f in fields(AutomaticSettings) if f.type in ("int", int)}
    assert set(LOWEST) == integers and set(HIGHEST) <= integers
    for name, low in LOWEST.items():
        assert low <= getattr(defaults, name) <= HIGHEST.get(name, np.inf)
    assert AutomaticSettings(**{**HIGHEST, "crop_n_layers": 1}).workload().points == 256**2 + 4  # all at their limits


@pytest.mark.parametrize(
    "changes, workload",
    [
        (dict(), Workload(crops=1, points=1024, batches=16)),
        (dict(points_per_side=10, points_per_batch=64), Workload(1, 100, 2)),
        (dict(points_per_side=8, points_per_batch=7, crop_n_layers=1), Workload(5, 320, 50)),
        # layer i: 4^i crops of (side // factor^i)^2 points, each crop in ceil(points / batch) batches
        (dict(points_per_side=9, crop_n_layers=2, crop_n_points_downscale_factor=2), Workload(21, 81 + 64 + 64, 2 + 4 + 16)),
        (dict(points_per_side=64, crop_n_layers=3, crop_n_points_downscale_factor=4),
         Workload(85, 4096 + 4 * 256 + 16 * 16 + 64 * 1, 64 + 4 * 4 + 16 + 64)),
    ],
)  # fmt: skip
def test_workload_counts_crops_points_and_batches(changes, workload):
    assert AutomaticSettings(**changes).workload() == workload


@pytest.mark.parametrize("name", ["mobile_sam_vit_t", SAM2_TINY_256])
@pytest.mark.parametrize(
    "changes",
    [dict(points_per_batch=3), dict(crop_n_layers=1, points_per_side=4, points_per_batch=5)],
    ids=["whole slice", "crops"],
)  # fmt: skip
def test_generate_slice_reports_every_decoder_batch(name, changes):
    predictor = random_model(name)
    rgb = _rgb(_image(48, 40, seed=2))
    before = rgb.copy()
    settings = replace(LOOSE, **changes)
    calls = []
    labels = generate_slice(predictor, rgb, settings, on_batch=lambda done, total: calls.append((done, total)))
    total = settings.workload().batches
    assert total > 1 and calls == [(done, total) for done in range(1, total + 1)]
    if name == SAM2_TINY_256 or not settings.crop_n_layers:  # MobileSAM's five crops twice took 36 s
        np.testing.assert_array_equal(labels, generate_slice(predictor, rgb, settings))  # the same masks without it
    np.testing.assert_array_equal(rgb, before)


def test_generate_slice_stops_between_batches_and_returns_none():
    predictor = random_model(SAM2_TINY_256)
    rgb = _rgb(_image(48, 48))
    before = rgb.copy()
    settings = replace(LOOSE, points_per_side=8, points_per_batch=4)  # 16 batches
    calls = []
    stopped = generate_slice(
        predictor, rgb, settings, on_batch=lambda done, total: calls.append(done), should_stop=lambda: len(calls) >= 2
    )
    assert stopped is None and calls == [1, 2]
    np.testing.assert_array_equal(rgb, before)
    generator = cached_generator(predictor, settings)
    assert not {"_process_batch", "_before_batch", "_after_batch"} & set(vars(generator)), (
        "the stop check must not outlive the run"
    )
    assert generate_slice(predictor, rgb, settings).max() > 0  # the generator still works after a stop


def test_generate_slice_asked_to_stop_at_once_runs_no_model(monkeypatch):
    predictor = random_model(SAM2_TINY_256)
    settings = replace(LOOSE, points_per_side=3)
    generator = cached_generator(predictor, settings)
    embedded = []
    monkeypatch.setattr(generator.predictor, "set_image", lambda image: embedded.append(image))
    calls = []
    result = generate_slice(
        predictor, _rgb(_image(32, 32)), settings, on_batch=lambda *a: calls.append(a), should_stop=lambda: True
    )
    assert result is None and calls == [] and embedded == []


def test_make_generator_rechecks_settings():
    settings = AutomaticSettings()
    object.__setattr__(settings, "points_per_batch", -3)  # bypassing the frozen dataclass
    with pytest.raises(InputError, match="Points per batch"):
        make_generator(random_model(SAM2_TINY_256), settings)


# ----------------------------------------------------------------------------------------------
# Painting and linking (no model)
# ----------------------------------------------------------------------------------------------


def test_paint_masks_smaller_on_top_hidden_dropped_ties_in_order():
    big = np.zeros((6, 8), bool)
    big[:, :5] = True  # 30 pixels
    small = np.zeros((6, 8), bool)
    small[1:3, 1:3] = True  # 4 pixels, inside big
    tie_a = np.zeros((6, 8), bool)
    tie_a[4:6, 6:8] = True  # 4 pixels
    tie_b = tie_a.copy()  # the same 4 pixels, later in upstream's list
    labels = paint_masks([{"segmentation": m, "area": int(m.sum())} for m in (small, big, tie_a, tie_b)], (6, 8))
    assert labels.dtype == np.int32 and labels.shape == (6, 8)
    assert (labels[big & ~small] == 1).all()  # largest painted first
    assert (labels[small] == 2).all()  # a smaller mask stays visible on top
    assert (labels[tie_b] == 3).all()  # equal areas keep upstream's order; tie_a is hidden, ids stay 1..n
    assert (labels[~(big | tie_a)] == 0).all()
    assert not paint_masks([], (3, 4)).any()


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _synthetic_slices():
    """A disc moving slowly, one appearing on slice 2, two merging on slice 3; raw ids shuffled per slice."""
    shape = (64, 64)
    rng = np.random.default_rng(1)
    slices, truth = [], []
    for k in range(6):
        objects = {"moving": _disc(shape, (12, 12 + 2 * k), 7)}
        if k >= 2:
            objects["appearing"] = _disc(shape, (22, 50), 6)
        if k < 3:
            objects["left"] = _disc(shape, (45, 12), 7)
            objects["right"] = _disc(shape, (45, 30), 5)
        else:
            merged = _disc(shape, (45, 12), 7) | _disc(shape, (45, 30), 5)
            merged[42:49, 12:31] = True
            objects["merged"] = merged
        raw = np.zeros(shape, np.int32)
        ids = rng.permutation(np.arange(1, len(objects) + 1)) * 7
        for value, mask in zip(ids, objects.values()):
            raw[mask] = value
        slices.append(raw)
        truth.append(objects)
    return slices, truth


def test_link_slices_gives_consistent_ids():
    slices, truth = _synthetic_slices()
    before = [s.copy() for s in slices]
    linked = link_slices(slices)
    for original, kept in zip(before, slices):
        np.testing.assert_array_equal(original, kept)  # pure

    def id_of(k, name):
        values = np.unique(linked[k][truth[k][name]])
        assert len(values) == 1 and values[0] > 0
        return int(values[0])

    moving = {id_of(k, "moving") for k in range(6)}
    appearing = {id_of(k, "appearing") for k in range(2, 6)}
    left = {id_of(k, "left") for k in range(3)}
    right = {id_of(k, "right") for k in range(3)}
    merged = {id_of(k, "merged") for k in range(3, 6)}
    assert len(moving) == len(appearing) == len(left) == len(right) == len(merged) == 1
    assert merged == left  # the merged object continues the one it overlaps most
    assert len(moving | appearing | left | right) == 4
    assert not any((s == next(iter(right))).any() for s in linked[3:])  # the other one ends
    assert all(s.dtype == np.int32 for s in linked)


def test_link_slices_is_one_to_one_and_needs_enough_overlap():
    shape = (40, 40)
    whole = np.zeros(shape, np.int32)
    whole[5:35, 5:35] = 1
    split = np.zeros(shape, np.int32)
    split[5:35, 5:22] = 4  # the larger half
    split[5:35, 23:35] = 9
    shifted = np.zeros(shape, np.int32)
    shifted[5:35, 28:39] = 2  # overlaps the 9-half (cols 28..34) by 7 of its 11 columns
    far = np.zeros(shape, np.int32)
    far[0:3, 0:3] = 5
    a, b, c, d = link_slices([whole, split, shifted, far])
    assert set(np.unique(b[split == 4])) == {1}  # the bigger half keeps the id
    assert set(np.unique(b[split == 9])) == {2}  # one to one: the other half is new
    assert set(np.unique(c[shifted == 2])) == {2}  # 7/11 >= 0.5 of the smaller
    assert set(np.unique(d[far == 5])) == {3}  # no overlap: new id
    strict = link_slices([split, shifted], min_overlap=0.9)
    assert set(np.unique(strict[1][shifted == 2])) == {3}
    with pytest.raises(InputError):
        link_slices([whole, whole[:10]])
    with pytest.raises(InputError):
        link_slices([whole], min_overlap=0.0)
    with pytest.raises(InputError):
        link_slices([-whole])


# ----------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_segmenter():
    volume = np.stack([_image(48, 56, seed=k) for k in range(4)])
    return Segmenter(random_model(SAM2_TINY_256), volume)


def test_generate_volume_cancel_keeps_finished_slices(volume_segmenter):
    calls = []
    result = generate_volume(
        volume_segmenter, 0, LOOSE, on_slice=lambda done, total: calls.append((done, total)),
        should_stop=lambda: len(calls) >= 2,
    )  # fmt: skip
    assert isinstance(result, VolumeResult)
    assert calls == [(1, 4), (2, 4)]
    assert result.cancelled and result.finished == [0, 1] and result.shape == (4, 48, 56)
    first, second = result.slice_labels(0), result.slice_labels(1)
    assert first.shape == (48, 56) and first.dtype == np.int32
    assert (first > 0).any() and (second > 0).any()
    assert result.highest == max(first.max(), second.max())
    np.testing.assert_array_equal(np.stack([first, second]), np.stack(link_slices([first, second])))


def test_generate_volume_cancel_mid_slice_drops_that_slice(volume_segmenter):
    """A cancel during a slice stops it between decoder batches instead of finishing it."""
    settings = replace(LOOSE, points_per_batch=1)  # four batches per slice
    progress = []
    asked_after_first_slice = []

    def stop_at_second_batch_of_second_slice():
        if progress:
            asked_after_first_slice.append(1)
        return len(asked_after_first_slice) == 3  # before the slice, its first batch, its second

    result = generate_volume(
        volume_segmenter, 0, settings, on_slice=lambda done, total: progress.append(done),
        should_stop=stop_at_second_batch_of_second_slice,
    )  # fmt: skip
    assert result.cancelled and result.finished == [0] and progress == [1]
    assert (result.slice_labels(0) > 0).any()
    generator = cached_generator(volume_segmenter.predictor, settings)
    assert not {"_process_batch", "_before_batch", "_after_batch"} & set(vars(generator)), (
        "the stop check must not outlive the run"
    )


@pytest.mark.parametrize("axis, index", [(1, 20), (2, 33)])
def test_generate_volume_along_other_axes(volume_segmenter, axis, index):
    calls = []
    result = generate_volume(volume_segmenter, axis, LOOSE, indices=[index], on_slice=lambda *a: calls.append(a))
    assert calls == [(1, 1)] and result.finished == [index] and not result.cancelled
    plane = volume_segmenter.plane(axis, index)
    expected = generate_slice(volume_segmenter.predictor, volume_segmenter.slice_rgb(plane), LOOSE)
    assert expected.shape == plane.size and expected.max() > 0
    np.testing.assert_array_equal(result.slice_labels(index), expected)


def test_generate_volume_stops_before_the_first_slice_and_checks_input(volume_segmenter):
    result = generate_volume(volume_segmenter, 0, LOOSE, should_stop=lambda: True)
    assert result.cancelled and result.finished == [] and result.highest == 0
    with pytest.raises(InputError, match="axis"):
        generate_volume(volume_segmenter, 3, LOOSE)
    with pytest.raises(InputError, match="outside"):
        generate_volume(volume_segmenter, 0, LOOSE, indices=[4])
    flat = Segmenter(volume_segmenter.predictor, _image(32, 32))
    with pytest.raises(InputError, match="3D"):
        generate_volume(flat, 0, LOOSE)


def test_a_slice_the_encoder_cannot_take_is_refused_before_the_generator_runs(mobile_sam):
    """A 2×5000 slice reached upstream's raw ValueError ("height and width must be > 0")."""
    with pytest.raises(InputError, match="too elongated"):
        generate_slice(mobile_sam, np.zeros((2, 5000, 3), np.uint8))
