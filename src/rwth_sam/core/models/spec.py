"""What the registry holds per model: how to build it, where its weights are, which predictor drives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rwth_sam.core.models.weights import Weights


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model, where its weights are, and which predictor drives it.

    ``build`` makes the architecture with random weights; ``make_predictor(module, name, device)``
    wraps a loaded module. ``strict`` is False where upstream itself loads non-strictly (SAM-HQ),
    in which case only missing keys are an error.
    """

    name: str
    family: str
    title: str
    build: Callable[[], torch.nn.Module]
    make_predictor: Callable[[torch.nn.Module, str, torch.device], object]
    weights: Weights | None = None
    strict: bool = True
