"""Turn a registry name (and optionally a local checkpoint) into a ready predictor."""

from __future__ import annotations

import os
from typing import Any

import torch

from .device import resolve_device
from .errors import WeightsError
from .predictors.base import Predictor
from .registry import ModelSpec, get_model_spec
from .weights import fetch, load_state_dict


def load_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
    progressbar: Any = True,
) -> Predictor:
    """Build model ``name`` and load its weights.

    Weights come from ``checkpoint`` if given, else from the cache (downloaded on first use).
    ``pretrained=False`` keeps the random initialisation: the same compute, for benchmarks and tests.
    """
    spec = get_model_spec(name)
    module = spec.build()
    if pretrained:
        path = checkpoint if checkpoint is not None else _official_checkpoint(spec, progressbar)
        load_weights(module, spec, path)
    return wrap_module(spec, module, device)


def wrap_module(spec: ModelSpec, module: torch.nn.Module, device: str | torch.device | None = None) -> Predictor:
    """A predictor around an already built module (moved to ``device``, in eval mode)."""
    device = resolve_device(device)
    module.to(device).eval()
    return spec.make_predictor(module, spec.name, device)


def load_weights(module: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    state = load_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise WeightsError(f"{path} does not fit {spec.title}: {error}") from error
    problems = list(result.missing_keys) + ([] if not spec.strict else list(result.unexpected_keys))
    if problems:
        raise WeightsError(
            f"{path} does not fit {spec.title}: {len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected weights (e.g. {problems[0]}). Pick the checkpoint made for this model."
        )


def _official_checkpoint(spec: ModelSpec, progressbar: Any):
    if spec.weights is None:
        raise WeightsError(f"{spec.title} has no official download; pick a local checkpoint file.")
    return fetch(spec.weights, progressbar=progressbar)
