"""3D propagation (core.propagation): SAM 2 against upstream's video predictor, and the SAM 1 path."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from rwth_sam import Embedding, InputError, Prediction, Predictor, Segmenter
from rwth_sam.core.embeddings.cache import EmbeddingCache
from rwth_sam.core.phantom import CAN, VOID, battery_phantom
from rwth_sam.core.tasks.propagation import PropagationResult, VideoFrames, propagate
from rwth_sam.core.upstream.sam2 import fix_memory_dtype

from conftest import SAM2_TINY_256, count_embeds, random_model

# ---------------------------------------------------------------------------------------------
# SAM 2: equal to upstream's own video predictor


@pytest.fixture(scope="module")
def phantom8():
    return battery_phantom(shape=(8, 256, 256))


@pytest.fixture(scope="module")
def upstream_video():
    """An independent upstream SAM2VideoPredictor with the test model's weights (copied, not shared)."""
    from sam2.build_sam import build_sam2_video_predictor

    model = random_model(SAM2_TINY_256).model
    video = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=["++model.image_size=256"]
    )
    video.load_state_dict(model.state_dict(), strict=True)
    # upstream fails in float32 on a frame with no object pointer yet (bfloat16 memory alone):
    # the same cast as the plugin's, which equals upstream's own dtype promotion everywhere else
    fix_memory_dtype(video)
    return video


def _upstream_run(video, source, start, cond, from_index, directions):
    """Upstream's own pipeline: init_state + add_new_mask + propagate_in_video. ``source``: a folder
    (upstream's own loader reads it) or (frames, height, width) in memory (what its loader returns)."""
    masks: dict[int, dict[int, np.ndarray]] = {}
    with torch.inference_mode():
        if isinstance(source, tuple):
            with mock.patch("sam2.sam2_video_predictor.load_video_frames", return_value=source):
                state = video.init_state("<frames in memory>")
        else:
            state = video.init_state(str(source))
        for index in sorted(cond):
            for obj_id, mask in sorted(cond[index].items()):
                video.add_new_mask(state, index - start, obj_id, mask)
        for reverse in directions:
            for frame_idx, obj_ids, logits in video.propagate_in_video(
                state, start_frame_idx=from_index - start, reverse=reverse
            ):
                masks[start + frame_idx] = {int(o): (logits[k, 0] > 0).numpy() for k, o in enumerate(obj_ids)}
    return masks


def _write_lossless_frames(segmenter, axis, start, end, folder):
    """The slices as the model sees them, losslessly (PNG data under upstream's '<n>.jpg' names:
    PIL reads by content), so upstream's own folder loader sees exactly the same pixels."""
    folder.mkdir()
    for n, index in enumerate(range(start, end + 1)):
        Image.fromarray(segmenter.slice_rgb(segmenter.plane(axis, index))).save(folder / f"{n:05d}.jpg", format="PNG")
    return folder


def test_frames_equal_upstream_loader(phantom8, tmp_path):
    """Where no resizing is involved (slices of the model's size), the in-memory frames (the 2D
    predictor's input) are exactly what upstream's own folder loader makes of the same pixels."""
    from sam2.utils.misc import load_video_frames

    image, _ = phantom8
    segmenter = Segmenter(random_model(SAM2_TINY_256), image)
    folder = _write_lossless_frames(segmenter, 0, 2, 5, tmp_path / "frames")
    upstream, height, width = load_video_frames(
        str(folder), 256, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    ours = VideoFrames(segmenter, 0, 2, 5)
    assert (height, width) == (256, 256) and len(ours) == 4
    assert torch.equal(ours.stacked(), upstream)
    assert torch.equal(ours[-3], upstream[1])


@pytest.mark.parametrize(
    "direction, from_index, extra",
    [("both", None, False), ("forward", 5, True), ("backward", 5, True)],
)
def test_sam2_equals_upstream_video_predictor(phantom8, upstream_video, tmp_path, direction, from_index, extra):
    image, labels = phantom8
    predictor = random_model(SAM2_TINY_256)
    segmenter = Segmenter(predictor, image)
    start, end = 0, 7
    cond = {4: {1: labels[4] == VOID, 2: labels[4] == CAN}}
    if extra:  # a user correction on slice 5, kept as a conditioning slice
        cond[5] = {1: labels[5] == VOID}
    progress = []
    result = propagate(
        segmenter,
        0,
        end,
        start,
        cond,
        direction=direction,
        from_index=from_index,
        on_slice=lambda done, total: progress.append((done, total)),
    )
    first = 4 if from_index is None else from_index
    directions = {"both": [False, True], "forward": [False], "backward": [True]}[direction]
    folder = _write_lossless_frames(segmenter, 0, start, end, tmp_path / "frames")
    expected = _upstream_run(upstream_video, folder, start, cond, first, directions)

    visited = sorted(expected)
    assert result.finished == sorted(set(visited) | set(cond))
    assert not result.cancelled
    assert progress == [(k + 1, len(visited)) for k in range(len(visited))]
    compared = 0
    for index in visited:
        for obj_id, mask in expected[index].items():
            if obj_id in cond.get(index, {}):
                assert np.array_equal(result.masks[index][obj_id], cond[index][obj_id])  # the user's own mask
            else:
                assert result.masks[index][obj_id].dtype == bool
                assert np.array_equal(result.masks[index][obj_id], mask), (index, obj_id)
                compared += 1
            assert isinstance(result.object_scores[index][obj_id], float)
    assert compared >= len(visited) - len(cond)
    # a meaningful comparison: the random model's masks are neither all empty nor all full
    areas = [m.sum() for index in visited for m in expected[index].values()]
    assert any(0 < a < 256 * 256 for a in areas)


def test_sam2_builds_video_predictor_once_and_shares_weights():
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    predictor = random_model(SAM2_TINY_256)
    video = predictor.video_predictor()
    assert predictor.video_predictor() is video
    assert isinstance(video, SAM2VideoPredictor)
    for a, b in zip(predictor.model.parameters(), video.parameters(), strict=True):
        assert a.data_ptr() == b.data_ptr()


def test_sam2_without_a_config_adopts_the_image_model_and_tracks_the_same(phantom8):
    """A SAM 2 model registered without its hydra config (a third party's ModelSpec): its video
    predictor is made of the image model's own modules, with the same settings and results."""
    from rwth_sam.core.models.predictors.sam2 import Sam2Predictor

    image, labels = phantom8
    predictor = random_model(SAM2_TINY_256)
    adopted = Sam2Predictor(predictor.model, predictor.name, predictor.device)
    assert adopted.hydra_config is None and predictor.hydra_config is not None
    video = adopted.video_predictor()
    assert video.image_encoder is predictor.model.image_encoder  # the same modules, not a copy
    cond = {2: {1: labels[2] == VOID}}
    expected = propagate(Segmenter(predictor, image), 0, 0, 4, cond)
    result = propagate(Segmenter(adopted, image), 0, 0, 4, cond)
    assert result.finished == expected.finished == [0, 1, 2, 3, 4]
    for index in (0, 1, 3, 4):
        assert np.array_equal(result.masks[index][1], expected.masks[index][1]), index
    assert result.object_scores == expected.object_scores


def test_sam2_cancel_keeps_finished_slices(phantom8):
    image, labels = phantom8
    segmenter = Segmenter(random_model(SAM2_TINY_256), image)
    done = []
    result = propagate(
        segmenter,
        0,
        0,
        7,
        {4: {1: labels[4] == VOID}},
        on_slice=lambda d, t: done.append(d),
        should_stop=lambda: len(done) >= 3,
    )
    assert result.cancelled
    assert result.finished == [4, 5, 6]
    assert sorted(result.masks) == [4, 5, 6] and sorted(result.object_scores) == [4, 5, 6]


def test_sam2_other_axis_equals_upstream_given_the_same_frames(phantom8, upstream_video):
    """Slices of 8 x 256 along axis 2 (resized to the model's square): upstream, fed the plugin's
    in-memory frames and encoding them itself, tracks exactly as the plugin does."""
    image, labels = phantom8
    segmenter = Segmenter(random_model(SAM2_TINY_256), image)
    start, end = 100, 103
    cond = {101: {3: segmenter.plane(2, 101).take(labels) == CAN}}
    result = propagate(segmenter, 2, start, end, cond)
    frames = VideoFrames(segmenter, 2, start, end).stacked()
    expected = _upstream_run(upstream_video, (frames, 8, 256), start, cond, 101, [False, True])
    assert sorted(expected) == result.finished == [100, 101, 102, 103]
    for index in (100, 102, 103):
        assert np.array_equal(result.masks[index][3], expected[index][3]), index
    assert any(0 < expected[i][3].sum() < 8 * 256 for i in (100, 102, 103))


def _count_forward_calls(monkeypatch, module) -> list:
    calls = []
    forward = module.forward
    monkeypatch.setattr(module, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_sam2_reuses_and_fills_the_embedding_cache(phantom8, monkeypatch):
    """Slices embedded before (clicks, prefetch) are not encoded again by propagation, upstream's
    video predictor never encodes a frame itself, and the propagated slices are then cached for
    corrections: a click on one of them runs no encoder."""
    image, labels = phantom8
    predictor = random_model(SAM2_TINY_256)
    segmenter = Segmenter(predictor, image)
    for index in range(2, 6):
        segmenter.embed(segmenter.plane(0, index))
    ours = count_embeds(monkeypatch, predictor)
    upstreams = _count_forward_calls(monkeypatch, predictor.video_predictor().image_encoder)
    result = propagate(segmenter, 0, 0, 7, {4: {1: labels[4] == VOID}})
    assert result.finished == list(range(8))
    assert len(ours) == 4 and len(upstreams) == 0  # slices 0, 1, 6 and 7, once each
    assert all(segmenter.is_embedded(segmenter.plane(0, i)) for i in range(8))
    segmenter.predict(segmenter.plane(0, 7), points=[(128, 128)])
    assert len(ours) == 4


def test_sam2_range_larger_than_the_cache_keeps_the_slices_embedded_ahead(phantom8, monkeypatch):
    """With room for 4 of 8 slices and 3 of the backward half embedded ahead, the forward pass
    evicts the slices it has passed, not those: each slice is encoded once (an LRU cache would
    evict the backward half first and encode it again)."""
    image, labels = phantom8
    predictor = random_model(SAM2_TINY_256)
    probe = Segmenter(predictor, image)
    slice_bytes = probe.embed(probe.plane(0, 0)).nbytes
    segmenter = Segmenter(predictor, image, cache=EmbeddingCache(max_bytes=4 * slice_bytes))
    for index in (2, 1, 0):
        segmenter.embed(segmenter.plane(0, index))
    ours = count_embeds(monkeypatch, predictor)
    result = propagate(segmenter, 0, 0, 7, {4: {1: labels[4] == VOID}})
    assert result.finished == list(range(8))
    assert len(ours) == 5  # slices 3..7, once each


def test_sam2_other_axis_only_makes_range_frames(phantom8, monkeypatch):
    image, labels = phantom8
    segmenter = Segmenter(random_model(SAM2_TINY_256), image)
    made = []
    original = segmenter.slice_rgb
    monkeypatch.setattr(segmenter, "slice_rgb", lambda plane: made.append(plane.index) or original(plane))
    cond = {101: {3: segmenter.plane(2, 101).take(labels) == CAN}}
    result = propagate(segmenter, 2, 100, 103, cond)
    assert result.finished == [100, 101, 102, 103]
    assert set(made) <= set(range(100, 104))
    assert result.masks[102][3].shape == (8, 256)


# ---------------------------------------------------------------------------------------------
# SAM 1 family: prompt projection, checked with a stand-in predictor


class OraclePredictor(Predictor):
    """Returns the connected region of the slice's non-zero pixels that the box overlaps."""

    def __init__(self):
        super().__init__(torch.nn.Identity(), "oracle", torch.device("cpu"))
        self.calls = []

    @property
    def input_size(self) -> int:
        return 1024

    def _embed(self, rgb):
        return Embedding(torch.from_numpy(rgb[..., 0].copy()), tuple(rgb.shape[:2]), self.name)

    def _predict(self, embedding, prompts, multimask, all_masks):
        self.calls.append(prompts)
        slice_ = embedding.features.numpy()
        regions, _ = ndimage.label(slice_ > 0)
        x0, y0, x1, y1 = np.round(prompts.box).astype(int)
        under = np.unique(regions[y0 : y1 + 1, x0 : x1 + 1])
        mask = np.isin(regions, under[under > 0])
        return Prediction(mask[None], np.array([0.9], np.float32), np.zeros((1, 256, 256), np.float32))


def _truth(shape=(16, 40, 48)):
    """Two objects: an ellipsoid through slices 3..12 (label 1) and a slab through all slices (label 2)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[((z - 7.5) / 5.2) ** 2 + ((y - 15) / 9) ** 2 + ((x - 15) / 10) ** 2 <= 1] = 1
    labels[:, 30:36, 30:44] = 2
    return labels


def test_projection_reproduces_truth_and_stops_where_it_vanishes():
    labels = _truth()
    image = (labels * 100).astype(np.uint8)
    predictor = OraclePredictor()
    segmenter = Segmenter(predictor, image)
    cond = {8: {1: labels[8] == 1, 2: labels[8] == 2}}
    result = propagate(segmenter, 0, 0, 15, cond)
    assert result.finished == list(range(16)) and not result.cancelled
    present = [i for i in range(16) if (labels[i] == 1).any()]
    assert present == list(range(3, 13))
    for index in range(16):
        assert np.array_equal(result.masks[index][2], labels[index] == 2)
        if index in present:
            assert np.array_equal(result.masks[index][1], labels[index] == 1), index
        elif index in (2, 13):  # where it vanished: an empty mask, then nothing
            assert not result.masks[index].get(1, np.zeros(1)).any()
        else:
            assert 1 not in result.masks[index]
    # the box of the previous slice's mask, and its logits, prompt the next one
    assert all(p.box is not None for p in predictor.calls)
    assert sum(p.mask_logits is not None for p in predictor.calls) > 0
    assert result.object_scores[9][1] == pytest.approx(0.9)
    # the tips of the ellipsoid shrink fast: flagged for review
    assert any(index in (3, 12) and obj == 1 for index, obj, _ in result.flags)
    assert not any(obj == 2 for _, obj, _ in result.flags)


def test_directions_from_index_and_corrections():
    labels = _truth()
    segmenter = Segmenter(OraclePredictor(), (labels * 100).astype(np.uint8))
    cond = {8: {1: labels[8] == 1}, 10: {1: labels[10] == 1}}
    forward = propagate(segmenter, 0, 15, 2, cond, direction="forward", from_index=10)
    assert forward.finished == [8] + list(range(10, 16))
    assert np.array_equal(forward.masks[11][1], labels[11] == 1)
    backward = propagate(segmenter, 0, 2, 15, cond, direction="backward", from_index=10)
    assert backward.finished == list(range(2, 11))
    # default start: the conditioning slice nearest the middle of the range (8.5 -> 8)
    totals = []
    both = propagate(segmenter, 0, 2, 15, cond, on_slice=lambda d, t: totals.append((d, t)))
    assert both.finished == list(range(2, 16)) and totals[-1] == (14, 14)
    assert totals[0] == (1, 14)


def test_range_validation():
    labels = _truth()
    segmenter = Segmenter(OraclePredictor(), (labels * 100).astype(np.uint8))
    cond = {8: {1: labels[8] == 1}}
    with pytest.raises(InputError, match="outside the range"):
        propagate(segmenter, 0, 0, 5, cond)
    with pytest.raises(InputError, match="outside the volume"):
        propagate(segmenter, 0, 0, 16, cond)
    with pytest.raises(InputError, match="direction"):
        propagate(segmenter, 0, 0, 15, cond, direction="sideways")
    with pytest.raises(InputError, match="outside the range"):
        propagate(segmenter, 0, 5, 10, cond, from_index=12)
    with pytest.raises(InputError, match="no mask"):
        propagate(segmenter, 0, 0, 15, {})
    with pytest.raises(InputError, match="not"):
        propagate(segmenter, 0, 0, 15, {8: {1: np.ones((3, 3), bool)}})
    with pytest.raises(InputError):
        Segmenter(OraclePredictor(), np.zeros((8, 8), np.uint8)) and propagate(
            Segmenter(OraclePredictor(), np.zeros((8, 8), np.uint8)), 0, 0, 1, {0: {1: np.ones((8, 8), bool)}}
        )


def test_projection_cancel():
    labels = _truth()
    segmenter = Segmenter(OraclePredictor(), (labels * 100).astype(np.uint8))
    done = []
    result = propagate(
        segmenter,
        0,
        0,
        15,
        {8: {1: labels[8] == 1}},
        on_slice=lambda d, t: done.append(d),
        should_stop=lambda: len(done) >= 4,
    )
    assert isinstance(result, PropagationResult) and result.cancelled
    assert result.finished == [8, 9, 10, 11] and sorted(result.masks) == [8, 9, 10, 11]


@pytest.mark.parametrize("axis", [1, 2])
def test_projection_any_axis(axis):
    labels = _truth()
    segmenter = Segmenter(OraclePredictor(), (labels * 100).astype(np.uint8))
    middle = 15
    plane = segmenter.plane(axis, middle)
    result = propagate(segmenter, axis, 0, labels.shape[axis] - 1, {middle: {1: plane.take(labels) == 1}})
    for index in result.finished:
        truth = segmenter.plane(axis, index).take(labels) == 1
        if 1 in result.masks.get(index, {}):
            assert np.array_equal(result.masks[index][1], truth), index
        else:
            assert not truth.any()
    covered = [i for i in result.finished if result.masks.get(i, {}).get(1, np.zeros(1)).any()]
    assert covered == [i for i in range(labels.shape[axis]) if (segmenter.plane(axis, i).take(labels) == 1).any()]
