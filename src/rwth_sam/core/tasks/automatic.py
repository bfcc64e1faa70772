"""Automatic mask generation: segment everything in a slice, or in every slice of a volume.

The masks come from the predictor's own generator (``Predictor.make_mask_generator``): the upstream
generator of its family on its module, ``SamAutomaticMaskGenerator`` of ``segment_anything``,
``segment_anything_hq`` or ``mobile_sam``, or ``SAM2AutomaticMaskGenerator`` of ``sam2``. Every
field of ``AutomaticSettings`` is passed to it unchanged, so a mask list here is the one upstream's
``generate()`` returns. It then becomes a label image: masks are painted largest first, so smaller
masks stay visible on top of the larger ones they overlap, and the visible objects are numbered
1..n in painting order (1 is the largest).

``min_mask_region_area`` removes holes and islands smaller than that many pixels from every mask:
SAM's generators do it themselves (with OpenCV, then box NMS drops new duplicates). SAM 2's own
generator would do it on the low-resolution logits with a compiled CUDA extension that pip installs
of ``sam2`` lack (upstream then warns on every batch and skips it), so rwth-sam's SAM 2 generator
(``rwth_sam.core.upstream.sam2.MaskGenerator``) removes them from the full-resolution masks instead.

A run can take long (a dense grid, crop layers): ``generate_slice`` and ``generate_volume`` report
progress and ask whether to stop between the decoder's batches, and ``AutomaticSettings.workload``
tells what a slice costs before it starts.

In a volume, ``generate_volume`` segments each slice on its own and ``link_slices`` gives objects
that overlap on neighbouring slices one id.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from skimage.segmentation import relabel_sequential

from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.block_writes import PackedBlock
from rwth_sam.core.models.predictors.base import MaskGenerator, Predictor

# Upper bounds, from real use. SAM's defaults are 32 points per side, 64 per batch and no crop
# layers (1,024 prompt points, one encoder run); small particles in large slices take 64-128 points
# per side and 1-2 crop layers. A slice's time grows with its prompt points (a batch of 64 on a
# 1024² slice took 40-55 s with MobileSAM on one CPU thread, upsampling and filtering included), so
# the bounds leave room above real use and refuse what is far beyond it:
# - points per side: twice the densest grid in use (the points grow with its square).
# - points per batch: a batch's three masks per point are held at crop size while it is decoded
#   (1,024 points on a 1024² slice: 12 GB of float masks).
# - crop layers: layer i adds 4^i crops, each an encoder run with a full point grid: 3 layers are
#   85 crops per slice, 4 would be 341 (5: 1,365).
# - downscale factor: any larger one leaves no points in the first crop layer of any allowed grid.
# - prompt points per slice, all crops together: 2^19, 512 times SAM's default. The densest setting
#   in use (128 per side, 2 crop layers, no downscaling: 344,064 points) fits; 256 per side with 3
#   crop layers (5.6 million points, 87,000 batches of 64: hours even at a tenth of a second a
#   batch) does not.
LOWEST = {
    "points_per_side": 1, "points_per_batch": 1, "crop_n_layers": 0, "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
}  # fmt: skip
HIGHEST = {"points_per_side": 256, "points_per_batch": 1024, "crop_n_layers": 3, "crop_n_points_downscale_factor": 256}
_WHY_HIGHEST = {
    "points_per_side": "the time per slice grows with its square",
    "points_per_batch": "a batch's masks are all held in memory at slice size",
    "crop_n_layers": "crop layer i adds 4^i encoder runs per slice",
    "crop_n_points_downscale_factor": "a larger one leaves no points in the first crop layer",
}
MAX_PROMPT_POINTS = 2**19
# More prompt points per slice than this (a 128 × 128 grid, 16 times the default) and the widget
# warns, before the run, that a slice takes long.
LARGE_PROMPT_POINTS = 128 * 128


@dataclass(frozen=True)
class Workload:
    """What one slice costs: encoder runs (one per crop), prompt points and the decoder batches they take."""

    crops: int
    points: int
    batches: int


@dataclass(frozen=True)
class AutomaticSettings:
    """The upstream automatic mask generator's settings (SAM's defaults); checked on construction."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``InputError`` naming the first setting out of range."""
        for name in _INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{setting_label(name)} must be a whole number, not {value!r}.")
        for name in _FRACTIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise InputError(f"{setting_label(name)} must be a number, not {value!r}.")
        for name, low in LOWEST.items():
            if getattr(self, name) < low:
                raise InputError(f"{setting_label(name)} must be {low} or more, not {getattr(self, name)}.")
        for name, high in HIGHEST.items():
            if getattr(self, name) > high:
                raise InputError(
                    f"{setting_label(name)} must be {high} or less, not {getattr(self, name)}: {_WHY_HIGHEST[name]}."
                )
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{setting_label(name)} must be between 0 and 1, not {getattr(self, name)}.")
        if self.stability_score_offset < 0:
            raise InputError(f"Stability score offset must be 0 or more, not {self.stability_score_offset}.")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            raise InputError(f"Crop overlap ratio must be at least 0 and below 1, not {self.crop_overlap_ratio}.")
        deepest = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if deepest < 1:
            raise InputError(
                f"With {self.points_per_side} points per side, a downscale factor of "
                f"{self.crop_n_points_downscale_factor} leaves no points in crop layer {self.crop_n_layers}: "
                "use more points per side, fewer crop layers or a smaller downscale factor."
            )
        points = self.workload().points
        if points > MAX_PROMPT_POINTS:
            raise InputError(
                f"{points:,} prompt points per slice ({self.points_per_side} points per side, "
                f"{self.crop_n_layers} crop layers, downscale factor {self.crop_n_points_downscale_factor}) "
                f"are more than the limit of {MAX_PROMPT_POINTS:,} (SAM's default is 1,024). Use fewer points "
                "per side, fewer crop layers or a larger downscale factor."
            )

    def workload(self) -> Workload:
        """The crops, prompt points and decoder batches of one slice, as upstream's generator makes them:
        crop layer i has 4^i crops, each with a grid of points_per_side / factor^i points per side."""
        crops = points = batches = 0
        for layer in range(self.crop_n_layers + 1):
            per_crop = (self.points_per_side // self.crop_n_points_downscale_factor**layer) ** 2
            crops += 4**layer
            points += 4**layer * per_crop
            batches += 4**layer * -(-per_crop // self.points_per_batch)
        return Workload(crops, points, batches)


_INTEGERS = (
    "points_per_side",
    "points_per_batch",
    "crop_n_layers",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)
_FRACTIONS = tuple(f.name for f in fields(AutomaticSettings) if f.name not in _INTEGERS)


def setting_label(name: str) -> str:
    """A setting's name as people read it (points_per_side: Points per side)."""
    return name.replace("_", " ").replace("thresh", "threshold").capitalize()


SETTING_HELP: dict[str, str] = {
    "points_per_side": (
        "Prompts are a regular grid of points_per_side × points_per_side points over the slice, one "
        "mask search per point. More points find smaller objects; the time grows with the square."
    ),
    "points_per_batch": (
        "How many grid points the mask decoder handles at once. Larger batches can be faster but "
        "need more (GPU) memory; the masks are the same."
    ),
    "pred_iou_thresh": (
        "Keep a mask only if the model's own predicted quality (IoU) is above this (0–1). Higher "
        "keeps fewer, more confident masks; 0 keeps all."
    ),
    "stability_score_thresh": (
        "Keep a mask only if it barely changes when its cutoff is moved by the offset below (0–1). "
        "Higher keeps fewer, crisper masks; 0 keeps all."
    ),
    "stability_score_offset": (
        "How far the cutoff is moved (in logits) to measure stability. A larger offset is a stricter "
        "test of the same threshold."
    ),
    "box_nms_thresh": (
        "Masks whose boxes overlap more than this (IoU, 0–1) count as duplicates; the better-scored "
        "one is kept. Lower removes more overlapping masks; 1 keeps them all."
    ),
    "crop_n_layers": (
        "Run again on crops of the slice: layer i splits it into 2^i × 2^i overlapping crops. Finds "
        "small objects in large slices; each layer adds that many more encoder runs. 0: whole slice only."
    ),
    "crop_nms_thresh": (
        "Like the box threshold, but between masks from different crops (masks from smaller crops "
        "win). Only used with crop layers."
    ),
    "crop_overlap_ratio": (
        "How much neighbouring crops overlap, as a fraction of the slice's side in the first layer "
        "(less in deeper layers). Only used with crop layers."
    ),
    "crop_n_points_downscale_factor": (
        "Crop layer i uses points_per_side / factor^i points per side, keeping deep layers fast. "
        "1: every layer uses the full grid."
    ),
    "min_mask_region_area": (
        "Remove islands and fill holes smaller than this many pixels in every mask (then drop new "
        "duplicates). 0 turns it off; larger values give cleaner, blobbier objects."
    ),
}


# ----------------------------------------------------------------------------------------------
# The upstream generator
# ----------------------------------------------------------------------------------------------


def make_generator(predictor: Predictor, settings: AutomaticSettings | None = None) -> MaskGenerator:
    """The predictor's automatic mask generator (its family's upstream one), with every setting."""
    settings = AutomaticSettings() if settings is None else settings
    settings.validate()
    if not predictor.capabilities.mask_generator:
        raise InputError(f"{predictor.name} has no automatic mask generator.")
    if settings.min_mask_region_area > 0:
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise InputError(
                "Removing small regions (min mask region area > 0) needs OpenCV: pip install opencv-python-headless."
            ) from error
    return predictor.make_mask_generator({f.name: getattr(settings, f.name) for f in fields(settings)})


def run_generator(predictor: Predictor, generator: MaskGenerator, rgb: np.ndarray) -> list[dict]:
    """The generator's ``generate()`` records for ``rgb``: one dict per mask, with its binary
    ``segmentation`` and its ``area``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"Automatic segmentation takes an (H, W, 3) uint8 RGB image, not {rgb.shape} {rgb.dtype}.")
    predictor.check_slice(*rgb.shape[:2])  # too small, or (SAM's encoder) too elongated
    return predictor._with_mps_fallback(lambda: generator.generate(np.ascontiguousarray(rgb)))


def paint_masks(records: Sequence[dict], shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) int32 label image from ``generate()`` records: largest painted first, ids 1..n.

    Ties in area keep upstream's order. Objects entirely covered by smaller ones vanish, and the
    remaining ids are made consecutive, in painting order.
    """
    labels = np.zeros(shape, dtype=np.int32)
    order = np.argsort([-record["area"] for record in records], kind="stable")
    for value, i in enumerate(order, start=1):
        mask = records[i]["segmentation"]
        if mask.shape != tuple(shape):
            raise InputError(f"A mask of size {mask.shape} does not fit a {shape[0]}x{shape[1]} slice.")
        labels[mask] = value
    return compact_labels(labels)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber the ids present in ``labels`` to 1..n, keeping their order (0 stays 0), as int32."""
    return relabel_sequential(labels.astype(np.int32, copy=False))[0]


_last_generator: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_generator(predictor: Predictor, settings: AutomaticSettings | None = None):
    """``make_generator``, reusing the predictor's last generator while the settings stay the same.

    Building one is not free (SAM 2's compiles its image transforms with TorchScript), and a widget
    calls ``generate_slice`` again and again with the same settings.
    """
    settings = AutomaticSettings() if settings is None else settings
    cached = _last_generator.get(predictor)
    if cached is not None and cached[0] == settings:
        return cached[1]
    generator = make_generator(predictor, settings)
    _last_generator[predictor] = (settings, generator)
    return generator


def _labels(predictor: Predictor, generator, rgb: np.ndarray) -> np.ndarray:
    return paint_masks(run_generator(predictor, generator, rgb), tuple(rgb.shape[:2]))


def generate_slice(
    predictor: Predictor,
    rgb: np.ndarray,
    settings: AutomaticSettings | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray | None:
    """Segment everything in an (H, W, 3) uint8 slice: an (H, W) int32 label image, 0 background.

    A dense grid or crop layers take many decoder batches (minutes), so ``on_batch(done, total)``
    follows each one (``total`` is ``settings.workload().batches``) and ``should_stop()`` is asked
    before the slice and before each batch: when it is true the slice is abandoned and None returned.
    """
    settings = AutomaticSettings() if settings is None else settings
    generator = cached_generator(predictor, settings)
    should_stop = should_stop or (lambda: False)
    if should_stop():
        return None
    with _between_batches(generator, should_stop, on_batch, settings.workload().batches):
        try:
            return _labels(predictor, generator, rgb)
        except _Stopped:
            return None


# ----------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------


@dataclass
class VolumeResult:
    """A volume's automatic result: the linked labels of each slice done along ``axis`` (kept
    compressed: a volume's result need not fit in memory), whether it was cancelled, and the
    highest object id."""

    axis: int
    shape: tuple[int, ...]
    slices: dict[int, PackedBlock] = field(default_factory=dict)
    cancelled: bool = False
    highest: int = 0

    @property
    def finished(self) -> list[int]:
        return sorted(self.slices)

    def slice_labels(self, index: int) -> np.ndarray:
        """Slice ``index``'s linked labels, (H, W) int32."""
        return np.asarray(self.slices[index])


class SliceLinker:
    """Gives objects on consecutive slices that overlap one id, a slice at a time (see ``link_slices``)."""

    def __init__(self, min_overlap: float = 0.5):
        if not 0.0 < min_overlap <= 1.0:
            raise InputError(f"The minimum overlap for linking must be in (0, 1], not {min_overlap}.")
        self.min_overlap = min_overlap
        self.next_id = 1
        self.previous: np.ndarray | None = None

    def add(self, raw: np.ndarray) -> np.ndarray:
        """The next slice's labels, linked to the previous slice's (the input is not modified)."""
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise InputError(f"link_slices takes 2D label images, not an array of shape {raw.shape}.")
        previous = self.previous
        if previous is not None and previous.shape != raw.shape:
            raise InputError(f"Slices of shapes {previous.shape} and {raw.shape} cannot be linked.")
        ids = np.unique(raw)
        if len(ids) and ids[0] < 0:
            raise InputError(f"Label images hold ids of 0 (background) and up, not {ids[0]}.")
        ids = ids[ids != 0]
        mapping = dict.fromkeys(ids.tolist(), 0)
        if previous is not None and len(ids):
            for child, parent in _match(previous, raw, self.min_overlap):
                mapping[child] = parent
        for child in mapping:
            if mapping[child] == 0:
                mapping[child] = self.next_id
                self.next_id += 1
        linked = np.zeros(raw.shape, dtype=np.int32)
        if len(ids):
            lookup = np.zeros(int(ids[-1]) + 1, dtype=np.int32)
            lookup[ids] = [mapping[i] for i in ids.tolist()]
            foreground = raw > 0
            linked[foreground] = lookup[raw[foreground]]
        self.previous = linked
        return linked


def link_slices(labels_per_slice: Iterable[np.ndarray], min_overlap: float = 0.5) -> list[np.ndarray]:
    """Give objects on consecutive slices that overlap one id: 3D objects from 2D label images.

    Each slice's objects are matched to the previous slice's (already linked) objects: a pair can
    match when their overlap covers at least ``min_overlap`` of the smaller one. Pairs are taken
    greedily, most overlapping pixels first (then highest IoU, then lowest ids), one to one: an
    object takes at most one parent and a parent passes its id on to at most one object. Unmatched
    objects get new ids, in order of appearance. The inputs are not modified.
    """
    linker = SliceLinker(min_overlap)
    return [linker.add(raw) for raw in labels_per_slice]


def _match(parents: np.ndarray, children: np.ndarray, min_overlap: float) -> list[tuple[int, int]]:
    """One-to-one (child, parent) pairs of overlapping objects, greedy by overlap."""
    both = (parents > 0) & (children > 0)
    if not both.any():
        return []
    parent_ids, parent_areas = np.unique(parents[parents > 0], return_counts=True)
    child_ids, child_areas = np.unique(children[children > 0], return_counts=True)
    base = int(parent_ids[-1]) + 1
    keys, overlaps = np.unique(children[both].astype(np.int64) * base + parents[both], return_counts=True)
    pairs = np.stack([keys // base, keys % base])
    child_area = child_areas[np.searchsorted(child_ids, pairs[0])]
    parent_area = parent_areas[np.searchsorted(parent_ids, pairs[1])]
    eligible = overlaps >= min_overlap * np.minimum(child_area, parent_area)
    iou = overlaps / (child_area + parent_area - overlaps)
    order = np.lexsort((pairs[1], pairs[0], -iou, -overlaps))
    taken_children: set[int] = set()
    taken_parents: set[int] = set()
    matches = []
    for k in order:
        if not eligible[k]:
            continue
        child, parent = int(pairs[0, k]), int(pairs[1, k])
        if child in taken_children or parent in taken_parents:
            continue
        taken_children.add(child)
        taken_parents.add(parent)
        matches.append((child, parent))
    return matches


class _Stopped(Exception):
    """Raised inside upstream's ``generate()`` to abandon the slice in progress."""


def _between_batches(
    generator: MaskGenerator,
    should_stop: Callable[[], bool],
    on_batch: Callable[[int, int], None] | None = None,
    total: int = 0,
):
    """Ask ``should_stop()`` before each of the generator's decoder batches, and report each one
    done to ``on_batch(done, total)``, for the duration of the returned context.

    A slice of a big model with a dense point grid takes many batches (minutes on a CPU), and a
    cancel should not wait for all of them.
    """
    done = 0

    def before():
        if should_stop():
            raise _Stopped

    def after():
        nonlocal done
        done += 1
        if on_batch is not None:
            on_batch(done, total)

    return generator.between_batches(before, after)


def generate_volume(
    segmenter,
    axis: int,
    settings: AutomaticSettings | None = None,
    indices: Sequence[int] | None = None,
    on_slice: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_overlap: float = 0.5,
) -> VolumeResult:
    """Segment every slice (or ``indices``) of the segmenter's volume along ``axis`` and link them in 3D.

    Slices are segmented in index order, each as ``generate_slice`` would, from
    ``segmenter.slice_rgb``, and linked to the one before as they finish (``SliceLinker``), so that
    only the previous slice and the compressed results are held; ``on_slice(done, total)`` follows
    each one. ``should_stop()`` is asked before each slice and, so that a cancel need not wait for a slice to finish, before each of the
    decoder's batches: when it is true the run stops, drops the slice in progress and returns those
    that finished, with ``cancelled`` set.
    """
    shape = tuple(segmenter.shape)
    if len(shape) != 3:
        raise InputError(f"generate_volume takes a 3D volume; this image is {len(shape)}D: use generate_slice.")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not 0 <= axis < 3:
        raise InputError(f"The sliced axis must be 0, 1 or 2, not {axis!r}.")
    if indices is None:
        indices = list(range(shape[axis]))
    else:
        indices = sorted({int(i) for i in indices})
        outside = [i for i in indices if not 0 <= i < shape[axis]]
        if outside:
            raise InputError(f"Slice {outside[0]} is outside the volume (axis {axis} has {shape[axis]} slices).")
    if not 0.0 < min_overlap <= 1.0:
        raise InputError(f"The minimum overlap for linking must be in (0, 1], not {min_overlap}.")
    generator = cached_generator(segmenter.predictor, settings)
    should_stop = should_stop or (lambda: False)

    linker = SliceLinker(min_overlap)
    result = VolumeResult(axis, shape)
    with _between_batches(generator, should_stop):
        for index in indices:
            if should_stop():
                result.cancelled = True
                break
            plane = segmenter.plane(axis, index)
            try:
                raw = _labels(segmenter.predictor, generator, segmenter.slice_rgb(plane))
            except _Stopped:
                result.cancelled = True
                break
            result.slices[index] = PackedBlock(linker.add(raw))
            if on_slice is not None:
                on_slice(len(result.slices), len(indices))
    result.highest = linker.next_id - 1
    return result
