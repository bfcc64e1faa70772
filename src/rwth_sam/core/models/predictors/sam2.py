"""SAM 2 / 2.1 image predictor behind the common interface.

The encoder sees what upstream ``SAM2ImagePredictor.set_image`` feeds it (its transforms); the
embedding keeps the backbone's feature maps as ``forward_image`` returns them, before the image
predictor adds ``no_mem_embed``, because SAM 2's video predictor takes exactly these: a slice embedded
for a click is reused when propagating through the volume, and the other way round. Prompts go
through the model's prompt encoder and mask decoder exactly as upstream ``_predict`` does,
upsampling only the chosen mask.

The upstream internals this needs are in ``rwth_sam.core.upstream.sam2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rwth_sam.core.models.predictors.base import (
    Capabilities,
    Embedding,
    Prediction,
    Predictor,
    Prompts,
    select_candidates,
    to_prediction,
)


class Sam2Predictor(Predictor):
    """Predictor for SAM 2 models; ``hydra_config``, the packaged config the model was built from
    (e.g. "configs/sam2.1/sam2.1_hiera_t.yaml"), builds its video predictor (without one, the video
    predictor is made of the image model's own modules)."""

    features_format = "sam2-backbone-fpn"
    capabilities = Capabilities(mask_generator=True, video_propagation=True)

    def __init__(self, model, name, device, hydra_config: str | None = None):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from rwth_sam.core.upstream.sam2 import fit_feature_sizes, image_transforms

        super().__init__(model, name, device)
        self.hydra_config = hydra_config
        self._upstream = SAM2ImagePredictor(model)
        fit_feature_sizes(self._upstream)
        self._image_transforms = image_transforms(self._upstream)
        self._video: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (image model, its video predictor)

    @property
    def input_size(self) -> int:
        return self.model.image_size

    def input_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """An (H, W, 3) uint8 slice as the encoder's (3, S, S) float input (upstream's transforms)."""
        return self._image_transforms(rgb)

    def _embed(self, rgb: np.ndarray) -> Embedding:
        backbone_out = self.model.forward_image(self.input_tensor(rgb)[None].to(self.device))
        levels = backbone_out["backbone_fpn"][-self.model.num_feature_levels :]
        return Embedding({"backbone_fpn": list(levels)}, tuple(rgb.shape[:2]), self.name)

    def image_features(self, embedding: Embedding) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The decoder's image embedding and high-resolution features, made from the backbone's maps
        with the same operations as upstream ``set_image`` (values and memory layout alike)."""
        *high_res, lowest = embedding.features["backbone_fpn"]
        flat = lowest.flatten(2).permute(2, 0, 1)
        if self.model.directly_add_no_mem_embed:
            flat = flat + self.model.no_mem_embed
        return flat.permute(1, 2, 0).view(1, -1, *lowest.shape[-2:]), high_res

    def _predict(self, embedding: Embedding, prompts: Prompts, multimask: bool, all_masks: bool) -> Prediction:
        transforms = self._image_transforms
        orig_hw = embedding.image_size
        coords = labels = None
        if len(prompts.points):
            coords = transforms.transform_coords(
                torch.as_tensor(prompts.points, dtype=torch.float, device=self.device), normalize=True, orig_hw=orig_hw
            )[None]
            labels = torch.as_tensor(prompts.labels, dtype=torch.int, device=self.device)[None]
        if prompts.box is not None:
            box = transforms.transform_boxes(
                torch.as_tensor(prompts.box[None], dtype=torch.float, device=self.device),
                normalize=True,
                orig_hw=orig_hw,
            )
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device)
            coords = box if coords is None else torch.cat([box, coords], dim=1)
            labels = box_labels if labels is None else torch.cat([box_labels, labels], dim=1)
        masks_in = None
        if prompts.mask_logits is not None:
            masks_in = torch.as_tensor(prompts.mask_logits, dtype=torch.float, device=self.device)[None]

        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=masks_in)
        image_embed, high_res = self.image_features(embedding)
        low_res, scores, _, _ = self.model.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res,
        )
        keep = select_candidates(low_res, scores, all_masks)
        logits = transforms.postprocess_masks(low_res[:, keep], orig_hw)
        low_res = torch.clamp(low_res, -32.0, 32.0)
        return to_prediction(logits > self._upstream.mask_threshold, scores, low_res, keep)

    def make_mask_generator(self, settings: Mapping[str, Any]):
        from rwth_sam.core.upstream.sam2 import MaskGenerator

        return MaskGenerator(self.model, **settings)

    def video_predictor(self):
        """The video predictor sharing this model's weights (the same tensors), built once per model
        and device.

        Built from ``hydra_config`` with upstream's video settings (hole filling, binarised prompt
        masks) and given the image model's tensors (``load_state_dict(strict=True, assign=True)``:
        the same parameter names, no copy).
        """
        from rwth_sam.core.upstream.sam2 import adopt_image_model, build_video_predictor

        device = _device_of(self.model)
        if self._video is not None and self._video[0] is self.model and _device_of(self._video[1]) == device:
            return self._video[1]
        if self.hydra_config is None:
            video = adopt_image_model(self.model)
        else:
            with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
                video = build_video_predictor(self.hydra_config, self.model.image_size, device="cpu")
            video.load_state_dict(self.model.state_dict(), strict=True, assign=True)
            video.to(device).eval()
        self._video = (self.model, video)
        return video


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
