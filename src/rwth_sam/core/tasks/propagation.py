"""3D propagation: carry masks from conditioning slices through a range of a volume's slices.

``propagate`` goes from one slice forward to the end of the range and/or backward to its start, all
objects at once, with progress (``on_slice``) and cancel (``should_stop``), without Qt.

- SAM 2 / 2.1: the upstream *video* predictor (``SAM2VideoPredictor``) on the image model's own
  weights (shared tensors, built once per predictor). Slices are fed from memory, only those of the
  range, as the 2D predictor sees them; their image features come from the segmenter's embedding
  cache (``SliceFeatures``), so a slice embedded for clicks is not encoded again and the slices
  encoded here serve later clicks and corrections. Conditioning masks go in through
  ``add_new_mask``, tracking through ``propagate_in_video``. Object score: the model's
  ``object_score_logits`` per object and slice.
- SAM 1 family (and any other ``Predictor``): prompt projection, slice by slice: each object's box
  (and the previous slice's low-resolution logits) on slice k prompts slice k +/- 1 through
  ``Segmenter.predict``; an object stops where its mask vanishes. Object score: predicted IoU.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from unittest import mock

import numpy as np
import torch

from rwth_sam.core.errors import InputError
from rwth_sam.core.models.predictors.base import Predictor

__all__ = ["PropagationResult", "SliceFeatures", "VideoFrames", "propagate", "video_predictor"]

AREA_JUMP = 2.0  # flag an object whose area changes by more than this factor from the previous slice
_DIRECTIONS = ("both", "forward", "backward")


@dataclass
class PropagationResult:
    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # slice -> {object id: (H, W) bool}
    object_scores: dict[int, dict[int, float]] = field(default_factory=dict)  # slice -> {object id: score}
    finished: list[int] = field(default_factory=list)  # slices completed, conditioning slices included
    cancelled: bool = False
    flags: list[tuple[int, int, str]] = field(default_factory=list)  # (slice, object id, reason)


# ---------------------------------------------------------------------------------------------
# SAM 2 video predictor, built once per image predictor


_video_predictors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sam2_config(predictor: Predictor) -> tuple[str, int] | None:
    """The hydra config and image size the predictor's model was built from (via the registry)."""
    from rwth_sam.core.models import builtin as models
    from rwth_sam.core.models.registry import get_model_spec

    try:
        build = get_model_spec(predictor.name).build
    except InputError:
        return None
    if isinstance(build, partial) and build.func is models.build_sam2 and build.args:
        return build.args[0], int(build.args[1] if len(build.args) > 1 else build.keywords.get("image_size", 1024))
    return None


def video_predictor(predictor: Predictor):
    """The ``SAM2VideoPredictor`` sharing ``predictor.model``'s weights (built once, then cached).

    Built from the model's registered config with ``build_sam2_video_predictor`` (upstream's video
    settings: hole filling, binarised prompt masks) and given the image model's tensors
    (``load_state_dict(strict=True, assign=True)``: the same parameter names, no copy). For a model
    registered some other way, the image model's modules are reused under the video class with the
    same settings.
    """
    model = predictor.model
    cached = _video_predictors.get(predictor)
    if cached is not None and cached[0] is model and _device_of(cached[1]) == _device_of(model):
        return cached[1]
    config = _sam2_config(predictor)
    if config is not None:
        from rwth_sam.core.models.builtin import build_sam2_video

        with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
            video = build_sam2_video(config[0], config[1], device="cpu")
        video.load_state_dict(model.state_dict(), strict=True, assign=True)  # the image model's tensors
        video.to(_device_of(model)).eval()
    else:
        video = _adopt(model)
    fix_memory_dtype(video)
    _video_predictors[predictor] = (model, video)
    return video


def fix_memory_dtype(video) -> None:
    """Make memory attention take its memory in the features' dtype.

    Upstream stores memory features as bfloat16 and relies on object pointers (float32) being
    concatenated with them to promote the memory to float32; without autocast (float32 CPU or GPU
    inference) a frame with no object pointer yet (an object whose only conditioning slice lies
    behind the tracking direction) fails with "mat1 and mat2 must have the same dtype". Casting
    to the features' dtype is what that promotion does, so results are otherwise unchanged.
    """
    attention = video.memory_attention
    if getattr(attention, "_rwth_sam_dtype_fix", False):
        return
    forward = attention.forward

    def cast_forward(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        dtype = (curr[0] if isinstance(curr, list) else curr).dtype
        memory = memory.to(dtype)
        memory_pos = memory_pos.to(dtype) if memory_pos is not None else None
        return forward(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos, num_obj_ptr_tokens=num_obj_ptr_tokens)

    attention.forward = cast_forward
    attention._rwth_sam_dtype_fix = True


def _adopt(model):
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    video = SAM2VideoPredictor.__new__(SAM2VideoPredictor)
    video.__dict__.update(model.__dict__)  # the same submodules and parameters
    video.fill_hole_area = 8
    video.non_overlap_masks = False
    video.clear_non_cond_mem_around_input = False
    video.add_all_frames_to_correct_as_cond = False
    video.binarize_mask_from_pts_for_mem_enc = True
    return video


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


class VideoFrames(Sequence):
    """Slices ``start..end`` of a segmenter's volume as SAM 2 video frames: (3, S, S) float32, the
    2D predictor's input for the slice (``Sam2Predictor.input_tensor``), made on demand (nothing is
    held: memory does not grow with the range)."""

    def __init__(self, segmenter, axis: int, start: int, end: int):
        self.segmenter, self.axis, self.start, self.end = segmenter, axis, start, end

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        plane = self.segmenter.plane(self.axis, self.start + index % len(self))
        return self.segmenter.predictor.input_tensor(self.segmenter.slice_rgb(plane))

    def stacked(self) -> torch.Tensor:
        """All frames as one (N, 3, S, S) tensor (what upstream's loader returns; for tests)."""
        return torch.stack([self[i] for i in range(len(self))])


class SliceFeatures:
    """The video predictor's image features per frame, from the segmenter's embeddings.

    Stands in for the inference state's ``cached_features``, where upstream keeps the last frame's
    backbone output and encodes the frame on a miss: here every frame is answered through
    ``segmenter.embed`` (memory cache, disk cache, else the encoder), with the position encodings
    upstream's image encoder adds, so upstream never encodes a frame itself. The frame image that
    upstream also keeps there is read by none of its callers: an empty placeholder stands in.
    """

    def __init__(self, segmenter, video, axis: int, start: int):
        self.segmenter, self.video, self.axis, self.start = segmenter, video, axis, start
        self._positions: dict[tuple, torch.Tensor] = {}
        self._image = torch.empty(1, 3, 0, 0, device=video.device)

    def get(self, frame_idx: int, default=None):
        embedding = self.segmenter.embed(self.segmenter.plane(self.axis, self.start + frame_idx))
        levels = list(embedding.to(self.video.device).features["backbone_fpn"])
        return self._image, {"backbone_fpn": levels, "vision_pos_enc": [self._position(level) for level in levels]}

    def _position(self, level: torch.Tensor) -> torch.Tensor:
        """The neck's position encoding of a feature map of this shape (as ``FpnNeck`` makes it)."""
        key = (tuple(level.shape), level.dtype)
        if key not in self._positions:
            self._positions[key] = self.video.image_encoder.neck.position_encoding(level).to(level.dtype)
        return self._positions[key]


def init_state(video, frames: Sequence, height: int, width: int, features: SliceFeatures):
    """Upstream ``init_state`` on in-memory ``frames`` whose image features come from ``features``
    (upstream's warm-up encoding of frame 0 is skipped: nothing to fill). Frames and state are
    offloaded to the CPU on CUDA (upstream's options for long videos)."""
    import sam2.sam2_video_predictor as svp

    offload = video.device.type == "cuda"
    with (
        mock.patch.object(svp, "load_video_frames", lambda **_: (frames, height, width)),
        mock.patch.object(video, "_get_image_feature", lambda *a, **k: None),
    ):
        state = video.init_state("<memory>", offload_video_to_cpu=offload, offload_state_to_cpu=offload)
    state["cached_features"] = features
    return state


# ---------------------------------------------------------------------------------------------
# the public entry point


def propagate(
    segmenter,
    axis: int,
    start: int,
    end: int,
    conditioning: dict[int, dict[int, np.ndarray]],
    direction: str = "both",
    from_index: int | None = None,
    on_slice: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PropagationResult:
    """Propagate ``conditioning`` masks through slices ``start..end`` (inclusive) along ``axis``.

    ``conditioning``: {slice index: {object id: (H, W) bool mask in ``segmenter.plane(axis, i)``'s
    orientation}}, all inside the range; they are kept as they are in the result. Propagation starts
    at ``from_index`` (default: the conditioning slice nearest the middle of the range) and goes
    forward to ``end`` and/or backward to ``start`` (``direction``: "both", "forward", "backward").
    ``on_slice(done, total)`` is called after each slice; ``should_stop()`` is asked between slices,
    and a stopped run returns the slices it finished with ``cancelled=True``.
    """
    if len(segmenter.shape) != 3:
        raise InputError("Propagation needs a 3D volume.")
    if not 0 <= axis < 3:
        raise InputError(f"Axis {axis} is not an axis of a 3D volume.")
    count = segmenter.shape[axis]
    start, end = sorted((int(start), int(end)))
    if start < 0 or end >= count:
        raise InputError(f"Slices {start}..{end} are outside the volume (axis {axis} has {count} slices).")
    if direction not in _DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(_DIRECTIONS)}, not {direction!r}.")
    size = segmenter.plane(axis, start).size
    cond: dict[int, dict[int, np.ndarray]] = {}
    for index, objects in conditioning.items():
        index = int(index)
        if not start <= index <= end:
            raise InputError(f"Conditioning slice {index} is outside the range {start}..{end}.")
        for obj_id, mask in objects.items():
            mask = np.asarray(mask).astype(bool)
            if mask.shape != tuple(size):
                raise InputError(f"The mask of object {obj_id} on slice {index} is {mask.shape}, not {tuple(size)}.")
            cond.setdefault(index, {})[int(obj_id)] = mask
    if not cond:
        raise InputError("Segment at least one slice first: there is no mask to propagate.")
    if from_index is None:
        middle = (start + end) / 2
        from_index = min(cond, key=lambda i: (abs(i - middle), i))
    from_index = int(from_index)
    if not start <= from_index <= end:
        raise InputError(f"Slice {from_index} to propagate from is outside the range {start}..{end}.")

    first = start if direction in ("both", "backward") else from_index
    last = end if direction in ("both", "forward") else from_index

    def passed(index: int) -> None:
        segmenter.cache.demote(segmenter.key(segmenter.plane(axis, index)))

    run = _Run(cond, last - first + 1, on_slice, should_stop, passed)

    from rwth_sam.core.models.predictors.sam2 import Sam2Predictor

    if isinstance(segmenter.predictor, Sam2Predictor):
        _propagate_sam2(segmenter, axis, start, end, from_index, direction, size, run)
    else:
        _propagate_projection(segmenter, axis, from_index, direction, start, end, run)
    return run.finish()


class _Run:
    """Bookkeeping shared by both paths: results, progress, cancel, flags, and the embedding cache:
    ``passed(index)`` is told of every finished slice, whose embedding this run will not read again
    (for a range larger than the cache, those go first, not the slices embedded ahead)."""

    def __init__(self, cond, total: int, on_slice, should_stop, passed: Callable[[int], None]):
        self.cond = cond
        self.total = total  # slices this run visits
        self.done: set[int] = set()
        self.on_slice, self.should_stop, self.passed = on_slice, should_stop, passed
        self.result = PropagationResult()
        self.score_is_logit = False
        self.previous_area: dict[tuple[bool, int], int] = {}  # (reverse, object id) -> area on the last slice

    def stopped(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.result.cancelled = True
        return self.result.cancelled

    def record(self, index: int, reverse: bool, masks: dict[int, np.ndarray], scores: dict[int, float]) -> None:
        """A propagated slice's masks (conditioning masks win) and scores; flags; progress."""
        for obj_id, mask in masks.items():
            mask = self.cond.get(index, {}).get(obj_id, mask)
            self.result.masks.setdefault(index, {})[obj_id] = mask
            score = scores.get(obj_id)
            if score is not None:
                self.result.object_scores.setdefault(index, {})[obj_id] = float(score)
            self._flag(index, reverse, obj_id, int(mask.sum()), score)
        self.passed(index)
        if index not in self.done:
            self.done.add(index)
            if self.on_slice is not None:
                self.on_slice(len(self.done), self.total)

    def _flag(self, index, reverse, obj_id, area, score):
        if index in self.cond and obj_id in self.cond[index]:
            self.previous_area[(reverse, obj_id)] = area
            return
        before = self.previous_area.get((reverse, obj_id))
        self.previous_area[(reverse, obj_id)] = area
        if self.score_is_logit and score is not None and score < 0 and area > 0:
            self._add_flag(index, obj_id, f"object score {score:.2f} < 0")
        if before:
            ratio = area / before
            if ratio > AREA_JUMP or ratio < 1 / AREA_JUMP:
                self._add_flag(index, obj_id, f"area {area} px is {ratio:.2f}x the previous slice's {before} px")

    def _add_flag(self, index, obj_id, reason):
        self.result.flags.append((index, obj_id, reason))

    def finish(self) -> PropagationResult:
        result = self.result
        for index, objects in self.cond.items():  # conditioning slices are finished by definition
            for obj_id, mask in objects.items():
                result.masks.setdefault(index, {})[obj_id] = mask
        result.finished = sorted(self.done | set(self.cond))
        result.masks = {i: result.masks[i] for i in sorted(result.masks) if i in result.finished}
        result.object_scores = {i: result.object_scores[i] for i in sorted(result.object_scores) if i in result.finished}
        return result


# ---------------------------------------------------------------------------------------------
# SAM 2: the video predictor


def _propagate_sam2(segmenter, axis, start, end, from_index, direction, size, run: _Run) -> None:
    run.score_is_logit = True
    predictor = segmenter.predictor
    video = video_predictor(predictor)
    frames = VideoFrames(segmenter, axis, start, end)
    import sam2.sam2_video_predictor as svp

    with torch.inference_mode(), warnings.catch_warnings(), mock.patch.object(svp, "tqdm", lambda items, **_: items):
        # no console progress bars (on_slice reports progress); without sam2's optional CUDA
        # extension, hole filling is skipped with a warning on every slice: once is enough
        warnings.filterwarnings("once", message=".*Skipping the post-processing step.*")
        state = init_state(video, frames, size[0], size[1], SliceFeatures(segmenter, video, axis, start))
        for index in sorted(run.cond):
            for obj_id, mask in sorted(run.cond[index].items()):
                video.add_new_mask(state, index - start, obj_id, torch.from_numpy(mask))
        passes = []
        if direction in ("both", "forward"):
            passes.append(False)
        if direction in ("both", "backward"):
            passes.append(True)
        for reverse in passes:
            steps = video.propagate_in_video(
                state, start_frame_idx=from_index - start, max_frame_num_to_track=None, reverse=reverse
            )
            try:
                if run.stopped():
                    return
                for frame_idx, obj_ids, video_res_masks in steps:
                    index = start + frame_idx
                    masks = {int(o): (video_res_masks[k, 0] > 0).cpu().numpy() for k, o in enumerate(obj_ids)}
                    scores = {int(o): _object_score(state, k, frame_idx) for k, o in enumerate(obj_ids)}
                    run.record(index, reverse, masks, scores)
                    if run.stopped():
                        return
            finally:
                steps.close()
        # conditioning slices outside the propagated part still get the model's scores
        for index in run.cond:
            for k, obj_id in enumerate(state["obj_ids"]):
                if obj_id in run.cond[index]:
                    score = _object_score(state, k, index - start)
                    if score is not None:
                        run.result.object_scores.setdefault(index, {}).setdefault(int(obj_id), score)


def _object_score(state, obj_idx: int, frame_idx: int) -> float | None:
    outputs = state["output_dict_per_obj"][obj_idx]
    for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
        out = outputs[key].get(frame_idx)
        if out is not None and out.get("object_score_logits") is not None:
            return float(out["object_score_logits"].float().reshape(-1)[0])
    return None


# ---------------------------------------------------------------------------------------------
# SAM 1 family (any Predictor): prompt projection


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """The bounding box (x0, y0, x1, y1) of a mask's pixels, in slice pixels; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def _propagate_projection(segmenter, axis, from_index, direction, start, end, run: _Run) -> None:
    passes = []
    if direction in ("both", "forward"):
        passes.append((False, range(from_index, end + 1)))
    if direction in ("both", "backward"):
        passes.append((True, range(from_index, start - 1, -1)))
    for reverse, indices in passes:
        tracked: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # object id -> (mask, logits) on the last slice
        for index in indices:
            if run.stopped():
                return
            masks, scores = {}, {}
            given = run.cond.get(index, {})
            for obj_id, (previous, logits) in sorted(tracked.items()):
                if obj_id in given:
                    continue
                box = mask_box(previous)
                prediction = segmenter.predict(segmenter.plane(axis, index), box=box, mask_logits=logits)
                mask = np.asarray(prediction.mask, dtype=bool)
                masks[obj_id] = mask
                scores[obj_id] = float(np.max(prediction.scores)) if len(prediction.scores) else 0.0
                tracked[obj_id] = (mask, prediction.best_logits)
            for obj_id, mask in given.items():
                masks[obj_id] = mask
                scores[obj_id] = 1.0  # the user's own mask
                tracked[obj_id] = (mask, None)
            for obj_id in [o for o, (mask, _) in tracked.items() if not mask.any()]:
                del tracked[obj_id]  # vanished: this object stops here
            run.record(index, reverse, masks, scores)
