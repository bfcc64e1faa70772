"""SAM, SAM-HQ and MobileSAM: one predictor over the three packages that share SAM's design.

The encoder runs through the upstream ``SamPredictor.set_image``, so what the model sees is exactly
what upstream feeds it. The decoder runs through the model's own prompt encoder and mask decoder,
with the same coordinate transform as upstream, but only the chosen mask is upsampled.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rwth_sam.core.errors import InputError
from rwth_sam.core.models.predictors.base import (
    Capabilities,
    Embedding,
    Prediction,
    Predictor,
    Prompts,
    select_candidates,
    to_prediction,
)


class SamPredictor(Predictor):
    """Predictor for models built by ``segment_anything`` (``package``; its forks: the subclasses)."""

    package = "segment_anything"
    capabilities = Capabilities(mask_generator=True)

    def __init__(self, model, name, device):
        super().__init__(model, name, device)
        self._upstream = importlib.import_module(self.package).SamPredictor(model)

    @property
    def input_size(self) -> int:
        return self.model.image_encoder.img_size

    def check_slice(self, height: int, width: int) -> None:
        """SAM resizes a slice to ``input_size`` along its long side: the short side must stay a pixel or more."""
        super().check_slice(height, width)
        if min(self._upstream.transform.get_preprocess_shape(height, width, self.input_size)) < 1:
            raise InputError(
                f"A slice of {height}x{width} pixels is too elongated for {self.name}: resized to {self.input_size} "
                "pixels along its long side, its short side would be under one pixel. Crop it, or use SAM 2."
            )

    def _embed(self, rgb: np.ndarray) -> Embedding:
        self._upstream.set_image(rgb, image_format="RGB")
        features = {"image": self._upstream.features, "input_size": tuple(self._upstream.input_size)}
        if self.capabilities.hq_tokens:
            features["interm"] = self._upstream.interm_features
        self._upstream.reset_image()
        return Embedding(features, tuple(rgb.shape[:2]), self.name)

    def _predict(self, embedding: Embedding, prompts: Prompts, multimask: bool, all_masks: bool) -> Prediction:
        transform = self._upstream.transform
        original_size = embedding.image_size
        points = None
        if len(prompts.points):
            coords = transform.apply_coords(prompts.points.astype(np.float64), original_size)
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device)[None],
                torch.as_tensor(prompts.labels, dtype=torch.int, device=self.device)[None],
            )
        boxes = None
        if prompts.box is not None:
            box = transform.apply_boxes(prompts.box[None], original_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        masks_in = None
        if prompts.mask_logits is not None:
            masks_in = torch.as_tensor(prompts.mask_logits, dtype=torch.float, device=self.device)[None]

        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks_in)
        decoder_args = dict(
            image_embeddings=embedding.features["image"],
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if self.capabilities.hq_tokens:
            decoder_args.update(hq_token_only=False, interm_embeddings=embedding.features["interm"])
        low_res, scores = self.model.mask_decoder(**decoder_args)

        keep = select_candidates(low_res, scores, all_masks)
        logits = self._upsample(low_res[:, keep], embedding.features["input_size"], original_size)
        return to_prediction(logits > self.model.mask_threshold, scores, low_res, keep)

    def make_mask_generator(self, settings: Mapping[str, Any]):
        from rwth_sam.core.upstream.segment_anything import mask_generator_class

        return mask_generator_class(self.package)(self.model, **settings)

    def _upsample(self, low_res: torch.Tensor, input_size, original_size) -> torch.Tensor:
        """Upstream's ``postprocess_masks``, minus its last resize when that one is to the same size.

        (Bilinear interpolation to the input's own size returns the input exactly, so the masks stay
        identical to upstream's; a 1024x1024 slice saves a full-resolution pass per click.)
        """
        side = self.input_size
        logits = F.interpolate(low_res, (side, side), mode="bilinear", align_corners=False)
        logits = logits[..., : input_size[0], : input_size[1]]
        if tuple(logits.shape[-2:]) != tuple(original_size):
            logits = F.interpolate(logits, original_size, mode="bilinear", align_corners=False)
        return logits


class SamHqPredictor(SamPredictor):
    """SAM-HQ (``segment_anything_hq``): SAM's decoder with its high-quality output token."""

    package = "segment_anything_hq"
    capabilities = Capabilities(mask_generator=True, hq_tokens=True)


class MobileSamPredictor(SamPredictor):
    """MobileSAM (``mobile_sam``): SAM's decoder on a small image encoder."""

    package = "mobile_sam"
