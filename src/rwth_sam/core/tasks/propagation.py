"""3D propagation: carry masks from conditioning slices through a range of a volume's slices.

``propagate`` goes from one slice forward to the end of the range and/or backward to its start, all
objects at once, with progress (``on_slice``) and cancel (``should_stop``), without Qt.

- A predictor with ``capabilities.video_propagation`` (SAM 2 / 2.1): its video predictor
  (``Predictor.video_predictor``, upstream's ``SAM2VideoPredictor`` on the image model's own
  weights, see ``rwth_sam.core.upstream.sam2.MemoryVideoPredictor``). Slices are fed from memory,
  only those of the range, as the 2D predictor sees them; their image features come from the
  segmenter's embedding cache (``SliceFeatures``), so a slice embedded for clicks is not encoded
  again and the slices encoded here serve later clicks and corrections. Conditioning masks go in
  through ``add_new_mask``, tracking through ``propagate_in_video``. Object score: the model's
  ``object_score_logits`` per object and slice.
- Any other ``Predictor`` (the SAM 1 family): prompt projection, slice by slice: each object's box
  (and the previous slice's low-resolution logits) on slice k prompts slice k +/- 1 through
  ``Segmenter.predict``; an object stops where its mask vanishes. Object score: predicted IoU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.errors import InputError

__all__ = ["PropagationResult", "SliceFeatures", "VideoFrames", "propagate"]

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
# SAM 2: frames and features from the segmenter


def range_plane(segmenter, axis: int, index: int, region: tuple[int, int, int, int] | None) -> SlicePlane:
    """Slice ``index`` of the range, or its ``region`` (the same rectangle on every slice)."""
    plane = segmenter.plane(axis, index)
    return plane if region is None else replace(plane, region=region)


class VideoFrames(Sequence):
    """Slices ``start..end`` of a segmenter's volume as SAM 2 video frames: (3, S, S) float32, the
    2D predictor's input for the slice (``Sam2Predictor.input_tensor``), made on demand (nothing is
    held: memory does not grow with the range)."""

    def __init__(self, segmenter, axis: int, start: int, end: int, region=None):
        self.segmenter, self.axis, self.start, self.end, self.region = segmenter, axis, start, end, region

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        plane = range_plane(self.segmenter, self.axis, self.start + index % len(self), self.region)
        return self.segmenter.predictor.input_tensor(self.segmenter.slice_rgb(plane))

    def stacked(self) -> torch.Tensor:
        """All frames as one (N, 3, S, S) tensor (what upstream's loader returns; for tests)."""
        return torch.stack([self[i] for i in range(len(self))])


class SliceFeatures:
    """The video predictor's image features per frame, from the segmenter's embeddings.

    Every frame is answered through ``segmenter.embed`` (memory cache, disk cache, else the
    encoder), so a slice embedded for clicks is not encoded again and upstream never encodes a
    frame itself.
    """

    def __init__(self, segmenter, device: torch.device, axis: int, start: int, region=None):
        self.segmenter, self.device, self.axis, self.start, self.region = segmenter, device, axis, start, region

    def __call__(self, frame_idx: int) -> list[torch.Tensor]:
        embedding = self.segmenter.embed(range_plane(self.segmenter, self.axis, self.start + frame_idx, self.region))
        return list(embedding.to(self.device).features["backbone_fpn"])


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
    region: tuple[int, int, int, int] | None = None,
) -> PropagationResult:
    """Propagate ``conditioning`` masks through slices ``start..end`` (inclusive) along ``axis``.

    ``conditioning``: {slice index: {object id: (H, W) bool mask in ``segmenter.plane(axis, i)``'s
    orientation}}, all inside the range; they are kept as they are in the result. Propagation starts
    at ``from_index`` (default: the conditioning slice nearest the middle of the range) and goes
    forward to ``end`` and/or backward to ``start`` (``direction``: "both", "forward", "backward").
    ``on_slice(done, total)`` is called after each slice; ``should_stop()`` is asked between slices,
    and a stopped run returns the slices it finished with ``cancelled=True``. ``region`` (row0, row1,
    col0, col1): propagate in that region of every slice, at native resolution (see ``SlicePlane``);
    the masks are then of the region.
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
    size = range_plane(segmenter, axis, start, region).size
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
        segmenter.cache.demote(segmenter.key(range_plane(segmenter, axis, index, region)))

    run = _Run(cond, last - first + 1, on_slice, should_stop, passed)
    if segmenter.predictor.capabilities.video_propagation:
        _propagate_sam2(segmenter, axis, start, end, from_index, direction, size, run, region)
    else:
        _propagate_projection(segmenter, axis, from_index, direction, start, end, run, region)
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
        result.object_scores = {
            i: result.object_scores[i] for i in sorted(result.object_scores) if i in result.finished
        }
        return result


# ---------------------------------------------------------------------------------------------
# SAM 2: the video predictor


def _propagate_sam2(segmenter, axis, start, end, from_index, direction, size, run: _Run, region) -> None:
    run.score_is_logit = True
    video = segmenter.predictor.video_predictor()
    frames = VideoFrames(segmenter, axis, start, end, region)
    offload = video.device.type == "cuda"  # frames and state on the CPU: upstream's options for long videos
    with torch.inference_mode(), warnings.catch_warnings():
        # without sam2's optional CUDA extension, hole filling is skipped with a warning on every
        # slice: once is enough
        warnings.filterwarnings("once", message=".*Skipping the post-processing step.*")
        features = SliceFeatures(segmenter, video.device, axis, start, region)
        state = video.init_state(
            frames, size[0], size[1], features, offload_video_to_cpu=offload, offload_state_to_cpu=offload
        )
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
                    masks = {int(o): (video_res_masks[k, 0] > 0).cpu().numpy() for k, o in enumerate(obj_ids)}
                    run.record(start + frame_idx, reverse, masks, video.object_scores(state, frame_idx))
                    if run.stopped():
                        return
            finally:
                steps.close()
        # conditioning slices outside the propagated part still get the model's scores
        for index, objects in run.cond.items():
            for obj_id, score in video.object_scores(state, index - start).items():
                if obj_id in objects:
                    run.result.object_scores.setdefault(index, {}).setdefault(obj_id, score)


# ---------------------------------------------------------------------------------------------
# SAM 1 family (any Predictor): prompt projection


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """The bounding box (x0, y0, x1, y1) of a mask's pixels, in slice pixels; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def _propagate_projection(segmenter, axis, from_index, direction, start, end, run: _Run, region) -> None:
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
                prediction = segmenter.predict(range_plane(segmenter, axis, index, region), box=box, mask_logits=logits)
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
