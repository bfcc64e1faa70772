"""What rwth-sam relies on inside ``sam2`` (SAM 2 / 2.1), and the subclasses that give it hooks.

- Image predictor: its feature-map sizes are hard-coded for 1024-pixel models (``fit_feature_sizes``
  sets the model's own), and its transforms are what the 2D predictor feeds the model
  (``image_transforms``).
- Automatic mask generator (``MaskGenerator``): upstream's, with hooks around each decoder batch and
  small regions removed at full resolution (upstream does it on the low-resolution logits with a
  CUDA extension that pip installs lack: it then warns on every batch and skips it).
- Video predictor (``MemoryVideoPredictor``): upstream's, on frames held in memory with image
  features from a provider (the segmenter's embeddings) instead of a folder of JPEGs and its own
  encoder, without its console progress bar, and with memory attention taking its memory in the
  features' dtype (``fix_memory_dtype``).

``RELIES_ON`` lists each upstream name this needs; ``tests/test_upstream.py`` checks every one.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import sam2.sam2_video_predictor as video_module
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.memory_attention import MemoryAttention
from sam2.sam2_video_predictor import SAM2VideoPredictor

from rwth_sam.core.upstream import BatchHooks

RELIES_ON = {
    "SAM2ImagePredictor._bb_feat_sizes": "set by fit_feature_sizes: upstream hard-codes 1024-pixel models' sizes",
    "SAM2ImagePredictor._transforms": "read by image_transforms: the model's input, prompt and mask transforms",
    "SAM2AutomaticMaskGenerator.min_mask_region_area": (
        "only passed on as the image predictor's max_hole_area/max_sprinkle_area: MaskGenerator passes 0 "
        "and removes small regions at full resolution itself"
    ),
    "SAM2AutomaticMaskGenerator._process_batch": "called once per decoder batch: overridden (BatchHooks)",
    "build_sam2_video_predictor": "a later ++model._target_ override picks MemoryVideoPredictor",
    "SAM2VideoPredictor.__init__": "sets only the video settings that adopt_image_model gives an image model",
    "SAM2VideoPredictor.init_state": "replaced by MemoryVideoPredictor.init_state: the same inference-state keys",
    "SAM2VideoPredictor._get_image_feature": (
        "overridden by MemoryVideoPredictor: reads (image, backbone_out) from cached_features, and its callers "
        "ignore the image"
    ),
    "SAM2VideoPredictor.propagate_in_video": "wraps its frames in sam2.sam2_video_predictor.tqdm (silenced)",
    "inference_state['output_dict_per_obj']": "object_score_logits per object and frame (object_scores)",
    "MemoryAttention.forward": "subclassed by CastingMemoryAttention (fix_memory_dtype), same signature",
}

FRAME_FEATURES = "rwth_sam_frame_features"  # inference-state key of the frame features provider
_POSITIONS = "rwth_sam_position_encodings"
_UPSTREAM_TQDM = video_module.tqdm


def backbone_feature_sizes(image_size: int) -> list[tuple[int, int]]:
    """SAM 2's three feature-map sizes for a model of ``image_size`` pixels."""
    return [(image_size // 4,) * 2, (image_size // 8,) * 2, (image_size // 16,) * 2]


def fit_feature_sizes(image_predictor) -> None:
    """Give an upstream ``SAM2ImagePredictor`` its model's feature-map sizes (upstream assumes 1024 pixels)."""
    image_predictor._bb_feat_sizes = backbone_feature_sizes(image_predictor.model.image_size)


def image_transforms(image_predictor):
    """The ``SAM2Transforms`` an upstream ``SAM2ImagePredictor`` applies to images, prompts and masks."""
    return image_predictor._transforms


# ---------------------------------------------------------------------------------------------
# Automatic mask generator


class MaskGenerator(BatchHooks, SAM2AutomaticMaskGenerator):
    """``SAM2AutomaticMaskGenerator`` for a model of any image size, with ``BatchHooks``.

    ``min_mask_region_area`` removes holes and islands from the full-resolution masks (SAM's rule,
    done with scikit-image; then records left empty are dropped) instead of upstream's CUDA-only
    removal on the logits.
    """

    def __init__(self, model, min_mask_region_area: int = 0, **settings):
        super().__init__(model, min_mask_region_area=0, **settings)
        self.min_mask_region_area = min_mask_region_area
        fit_feature_sizes(self.predictor)

    def generate(self, image: np.ndarray) -> list[dict]:
        records = super().generate(image)
        if self.min_mask_region_area > 0:
            records = [_without_small_regions(record, self.min_mask_region_area) for record in records]
            records = [record for record in records if record["area"] > 0]
        return records


def _without_small_regions(record: dict, min_area: int) -> dict:
    from skimage.morphology import remove_small_holes, remove_small_objects

    mask = remove_small_holes(record["segmentation"], area_threshold=min_area)
    mask = remove_small_objects(mask, min_size=min_area)
    return {**record, "segmentation": mask, "area": int(mask.sum())}


# ---------------------------------------------------------------------------------------------
# Video predictor


class CastingMemoryAttention(MemoryAttention):
    """Memory attention that takes its memory in the features' dtype.

    Upstream stores memory features as bfloat16 and relies on object pointers (float32) being
    concatenated with them to promote the memory to float32; without autocast (float32 CPU or GPU
    inference) a frame with no object pointer yet (an object whose only conditioning slice lies
    behind the tracking direction) fails with "mat1 and mat2 must have the same dtype". Casting
    to the features' dtype is what that promotion does, so results are otherwise unchanged.
    """

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        dtype = (curr[0] if isinstance(curr, list) else curr).dtype
        memory = memory.to(dtype)
        memory_pos = memory_pos.to(dtype) if memory_pos is not None else None
        return super().forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)


def fix_memory_dtype(video) -> None:
    """Make a SAM 2 video predictor's memory attention a ``CastingMemoryAttention`` (same weights).

    A memory attention of another class than upstream's is left as it is.
    """
    if type(video.memory_attention) is MemoryAttention:
        video.memory_attention.__class__ = CastingMemoryAttention


class MemoryVideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` on frames in memory whose image features come from a provider.

    ``init_state`` takes the frames (upstream's loader's output: (3, S, S) float tensors, made on
    demand by a sequence) and ``frame_features(frame_idx)``, the frame's backbone feature maps as
    ``forward_image`` gives them in ``backbone_fpn``; upstream never encodes a frame itself.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        fix_memory_dtype(self)

    @torch.inference_mode()
    def init_state(
        self,
        frames: Sequence,
        video_height: int,
        video_width: int,
        frame_features: Callable[[int], list[torch.Tensor]],
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ) -> dict:
        """Upstream's inference state, without loading frames from a path or encoding frame 0."""
        compute_device = self.device
        return {
            "images": frames,
            "num_frames": len(frames),
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": video_height,
            "video_width": video_width,
            "device": compute_device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else compute_device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            FRAME_FEATURES: frame_features,
            _POSITIONS: {},
        }

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """Upstream's, answered from the provider (on a state made by this ``init_state``): its cache
        holds the frame's features when it looks.

        The frame image upstream also keeps there is read by none of its callers: an empty
        placeholder stands in for it.
        """
        if FRAME_FEATURES in inference_state:
            levels = list(inference_state[FRAME_FEATURES](frame_idx))
            positions = [self._position_encoding(inference_state, level) for level in levels]
            image = torch.empty(1, 3, 0, 0, device=self.device)
            backbone_out = {"backbone_fpn": levels, "vision_pos_enc": positions}
            inference_state["cached_features"] = {frame_idx: (image, backbone_out)}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)

    def _position_encoding(self, inference_state, level: torch.Tensor) -> torch.Tensor:
        """The neck's position encoding of a feature map of this shape (as ``FpnNeck`` makes it)."""
        key = (tuple(level.shape), level.dtype)
        cache = inference_state[_POSITIONS]
        if key not in cache:
            cache[key] = self.image_encoder.neck.position_encoding(level).to(level.dtype)
        return cache[key]

    def propagate_in_video(self, inference_state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False):
        """Upstream's tracking, without its console progress bar (the caller reports progress).

        Upstream makes the bar when it starts, in the first step: only that step runs silenced.
        """
        steps = super().propagate_in_video(inference_state, start_frame_idx, max_frame_num_to_track, reverse)
        try:
            with _no_progress_bar():
                first = next(steps, None)
            if first is None:
                return
            yield first
            yield from steps
        finally:
            steps.close()

    def object_scores(self, inference_state, frame_idx: int) -> dict[int, float]:
        """Each object's object score logit on ``frame_idx`` (conditioning or tracked), where it has one."""
        scores = {}
        for obj_idx, obj_id in enumerate(inference_state["obj_ids"]):
            outputs = inference_state["output_dict_per_obj"][obj_idx]
            for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                out = outputs[key].get(frame_idx)
                if out is not None and out.get("object_score_logits") is not None:
                    scores[int(obj_id)] = float(out["object_score_logits"].float().reshape(-1)[0])
                    break
        return scores


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    video_module.tqdm = lambda items, **_: items
    try:
        yield
    finally:
        video_module.tqdm = _UPSTREAM_TQDM


def build_video_predictor(config: str, image_size: int = 1024, device="cpu") -> MemoryVideoPredictor:
    """The ``MemoryVideoPredictor`` of hydra ``config`` with random weights, with upstream's video
    settings (hole filling, binarised prompt masks); ``image_size`` as the image model's."""
    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    overrides.append(f"++model._target_={__name__}.{MemoryVideoPredictor.__name__}")
    return build_sam2_video_predictor(config, None, device=str(device), hydra_overrides_extra=overrides)


def adopt_image_model(model) -> MemoryVideoPredictor:
    """A ``MemoryVideoPredictor`` made of an image model's own modules (for a model built without
    a known config), with the settings ``build_sam2_video_predictor`` gives."""
    video = MemoryVideoPredictor.__new__(MemoryVideoPredictor)
    video.__dict__.update(model.__dict__)  # the same submodules and parameters
    video.fill_hole_area = 8
    video.non_overlap_masks = False
    video.clear_non_cond_mem_around_input = False
    video.add_all_frames_to_correct_as_cond = False
    video.binarize_mask_from_pts_for_mem_enc = True
    fix_memory_dtype(video)
    return video
