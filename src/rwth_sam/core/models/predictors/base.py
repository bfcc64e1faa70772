"""The interface every model family implements: embed a 2D slice once, then predict from prompts.

Embeddings are plain values (not predictor state), so they can be cached per slice and reused.
Prompts are in slice pixels: x is the column, y the row, pixel centres at integers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from rwth_sam.core.errors import InputError
from rwth_sam.core.models.device import warn_mps_fallback


@dataclass(frozen=True)
class Prompts:
    """Points (x, y) with labels (1 positive, 0 negative), an optional box and previous mask logits."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    @classmethod
    def make(cls, points=None, labels=None, box=None, mask_logits=None) -> Prompts:
        """Validate and normalise user input into arrays of the right shapes and dtypes."""
        points = np.zeros((0, 2)) if points is None else _numbers(points, "Points")
        if points.size % 2:
            raise InputError(f"Points are (x, y) pairs; got {points.size} numbers.")
        points = points.reshape(-1, 2) if points.size else np.zeros((0, 2))
        if not np.isfinite(points).all():
            raise InputError("Prompt coordinates must be finite numbers.")
        labels = np.ones(len(points)) if labels is None else np.asarray(labels).reshape(-1)
        if len(labels) != len(points):
            raise InputError(f"{len(points)} points but {len(labels)} labels.")
        if not np.isin(labels, (0, 1)).all():
            raise InputError("Point labels must be 1 (positive) or 0 (negative).")
        if box is not None:
            box = _numbers(box, "A box").reshape(-1)
            if box.shape != (4,):
                raise InputError("A box is (x0, y0, x1, y1).")
            if not np.isfinite(box).all():  # before min and max, which may drop a NaN
                raise InputError("Prompt coordinates must be finite numbers.")
            box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        if mask_logits is not None:
            mask_logits = _numbers(mask_logits, "Mask logits", np.float32)
            if mask_logits.ndim < 2 or mask_logits.size != np.prod(mask_logits.shape[-2:]):
                raise InputError(
                    f"Mask logits are one low-resolution mask (a prediction's best_logits), not {mask_logits.shape}."
                )
            mask_logits = mask_logits.reshape((1,) + mask_logits.shape[-2:])
            if not np.isfinite(mask_logits).all():
                raise InputError("Mask logits must be finite numbers.")
        if len(points) == 0 and box is None:
            raise InputError("Add a point or a box first: there is no prompt to segment from.")
        return cls(points.astype(np.float32), labels.astype(np.int32), box, mask_logits)

    @property
    def is_ambiguous(self) -> bool:
        """A lone point is ambiguous (part, object or whole?): ask for several masks and keep the best."""
        return len(self.points) == 1 and self.box is None and self.mask_logits is None


def _numbers(values, what: str, dtype=np.float64) -> np.ndarray:
    """``values`` as an array of numbers, or an InputError naming ``what`` (numpy's own says neither)."""
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, not {values!r:.60}.") from None


@dataclass
class Embedding:
    """A slice's image features, as the model family needs them, with the slice's size."""

    features: Any
    image_size: tuple[int, int]
    model_name: str

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(self.features))

    def to(self, device: torch.device) -> Embedding:
        return Embedding(_move(self.features, device), self.image_size, self.model_name)


@dataclass
class Prediction:
    """Masks at slice size, their predicted IoU scores and their low-resolution logits (for refinement)."""

    masks: np.ndarray  # (K, H, W) bool
    scores: np.ndarray  # (K,)
    logits: np.ndarray  # (K, S/4, S/4) float32, S the encoder input side (256 x 256 for SAM)

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.best]

    @property
    def best_logits(self) -> np.ndarray:
        return self.logits[self.best : self.best + 1]


@dataclass(frozen=True)
class Capabilities:
    """What a model family can do beyond embedding a slice and predicting masks from prompts.

    ``multimask``: three candidate masks for an ambiguous prompt. ``hq_tokens``: SAM-HQ's
    high-quality output token. ``mask_generator``: an automatic mask generator
    (``Predictor.make_mask_generator``). ``video_propagation``: SAM 2's video predictor
    (``Predictor.video_predictor``); 3D propagation uses it, else prompts each slice from its
    neighbour's mask.
    """

    multimask: bool = True
    hq_tokens: bool = False
    mask_generator: bool = False
    video_propagation: bool = False


class MaskGenerator(Protocol):
    """What automatic segmentation needs of a family's generator (upstream's, with batch hooks)."""

    def generate(self, image: np.ndarray) -> list[dict]:
        """Upstream's records, one dict per mask, with its binary ``segmentation`` and ``area``."""

    def between_batches(
        self, before: Callable[[], None], after: Callable[[], None]
    ) -> contextlib.AbstractContextManager[None]:
        """Call ``before`` (it may raise to stop) and ``after`` around each decoder batch."""


class Predictor(ABC):
    """A Segment Anything model ready to embed slices and answer prompts.

    Subclasses implement ``_embed`` and ``_predict`` and declare their ``capabilities`` (with the
    methods those need); this class handles devices (and the fall back from Apple MPS to the CPU
    when an operation is missing there) and input checks. A subclass that changes what its
    embeddings hold changes ``features_format``, so embeddings kept on disk in the old form are
    not read back.
    """

    features_format = "1"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, model: torch.nn.Module, name: str, device: torch.device):
        self.model = model
        self.name = name
        self.device = device

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Side of the square the encoder sees (1024 for SAM)."""

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(height, width) of the mask logits the prompt encoder takes: a quarter of the input side."""
        return self.input_size // 4, self.input_size // 4

    @abstractmethod
    def _embed(self, rgb: np.ndarray) -> Embedding: ...

    @abstractmethod
    def _predict(self, embedding: Embedding, prompts: Prompts, multimask: bool, all_masks: bool) -> Prediction: ...

    def embed(self, rgb: np.ndarray) -> Embedding:
        """Encode an (H, W, 3) uint8 RGB slice."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"The encoder takes an (H, W, 3) uint8 RGB image, not {rgb.shape} {rgb.dtype}.")
        self.check_slice(*rgb.shape[:2])
        return self._with_mps_fallback(lambda: self._embed(np.ascontiguousarray(rgb)))

    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        multimask: bool | None = None,
        all_masks: bool = False,
    ) -> Prediction:
        """Masks for prompts on an embedded slice.

        ``multimask`` (default: only for a lone point, where the family can) asks the decoder for
        three candidates. Only the best one is upsampled to slice size unless ``all_masks`` is set,
        which is what makes a click fast: upstream upsamples every candidate.
        """
        if embedding.model_name != self.name:
            raise InputError(f"This embedding was made by {embedding.model_name}, not {self.name}.")
        self.check_prompts(prompts)
        if multimask and not self.capabilities.multimask:
            raise InputError(f"{self.name} predicts one mask per prompt: it has no multimask output.")
        if multimask is None:
            multimask = prompts.is_ambiguous and self.capabilities.multimask
        return self._with_mps_fallback(lambda: self._predict(embedding.to(self.device), prompts, multimask, all_masks))

    def make_mask_generator(self, settings: Mapping[str, Any]) -> MaskGenerator:
        """The family's automatic mask generator on this model, given upstream's keyword ``settings``
        (for ``capabilities.mask_generator``)."""
        raise InputError(f"{self.name} has no automatic mask generator.")

    def video_predictor(self):
        """SAM 2's video predictor on this model's weights, an
        ``rwth_sam.core.upstream.sam2.MemoryVideoPredictor`` (for ``capabilities.video_propagation``)."""
        raise InputError(f"{self.name} has no video predictor.")

    def check_slice(self, height: int, width: int) -> None:
        """Refuse a slice the encoder cannot take, before it runs."""
        if min(height, width) < 2:
            raise InputError(f"A slice of {height}x{width} pixels is too small to segment.")

    def check_prompts(self, prompts: Prompts) -> None:
        """Refuse what ``Prompts.make`` cannot tell alone: mask logits of another model's size."""
        if prompts.mask_logits is not None and prompts.mask_logits.shape[-2:] != self.mask_input_size:
            height, width = self.mask_input_size
            raise InputError(
                f"{self.name} refines from mask logits of {height}x{width}, not "
                f"{prompts.mask_logits.shape[-2]}x{prompts.mask_logits.shape[-1]}: pass a prediction's best_logits "
                "made by this model."
            )

    def _with_mps_fallback(self, operation):
        with torch.inference_mode():
            try:
                return operation()
            except (NotImplementedError, RuntimeError) as error:
                if self.device.type != "mps":
                    raise
                warn_mps_fallback(error)
                self.device = torch.device("cpu")
                self.model.to(self.device)
                return operation()


def _tensors(features):
    if isinstance(features, torch.Tensor):
        yield features
    elif isinstance(features, dict):
        for value in features.values():
            yield from _tensors(value)
    elif isinstance(features, (list, tuple)):
        for value in features:
            yield from _tensors(value)


def _move(features, device):
    if isinstance(features, torch.Tensor):
        return features.to(device)
    if isinstance(features, dict):
        return {key: _move(value, device) for key, value in features.items()}
    if isinstance(features, (list, tuple)):
        return type(features)(_move(value, device) for value in features)
    return features


def select_candidates(low_res: torch.Tensor, scores: torch.Tensor, all_masks: bool) -> torch.Tensor | slice:
    """The decoder's candidates to upsample: all, or only the highest-scoring one."""
    if all_masks or low_res.shape[1] == 1:
        return slice(None)  # nothing to choose: no extra kernels (it matters on a GPU)
    return torch.argmax(scores[0]).reshape(1)


def to_prediction(masks: torch.Tensor, scores: torch.Tensor, low_res: torch.Tensor, keep) -> Prediction:
    return Prediction(
        masks=masks[0].cpu().numpy(),
        scores=scores[0, keep].float().cpu().numpy(),
        logits=low_res[0, keep].float().cpu().numpy(),
    )
