"""Turn a registry name (and optionally a local checkpoint) into a ready predictor."""

from __future__ import annotations

import os
from typing import Any

import torch

from rwth_sam.core.errors import WeightsError
from rwth_sam.core.models.device import resolve_device
from rwth_sam.core.models.predictors.base import Predictor
from rwth_sam.core.models.registry import ModelSpec, get_model_spec
from rwth_sam.core.models.weights import fetch, load_state_dict


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
    device = resolve_device(device)  # a misspelt device is refused before seconds of building and loading
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
    """Load the checkpoint at ``path`` into ``module``, refusing one not made for ``spec``'s model.

    The checks come first: torch would copy every weight that fits before complaining about the
    others, leaving the module half loaded.
    """
    state = load_state_dict(path)
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problems = missing + (unexpected if spec.strict else [])
    if problems:
        raise WeightsError(
            f"{path} does not fit {spec.title}: {len(missing)} missing and {len(unexpected)} unexpected "
            f"weights (e.g. {problems[0]}). Pick the checkpoint made for this model."
        )
    misfits = [key for key, weight in expected.items() if not _fits(state[key], weight)]
    if misfits:
        key = misfits[0]
        raise WeightsError(
            f"{path} does not fit {spec.title}: {len(misfits)} of its weights have another shape (e.g. "
            f"{key}: {_described(state[key])} in the file, shape {tuple(expected[key].shape)} in the model). "
            "Pick the checkpoint made for this model."
        )
    module.load_state_dict(state, strict=False)


def _fits(found, weight: torch.Tensor) -> bool:
    """Whether torch loads ``found`` into ``weight`` (it still takes scalars saved as 1-element tensors)."""
    if not isinstance(found, torch.Tensor):
        return False
    return found.shape == weight.shape or (weight.ndim == 0 and found.shape == (1,))


def _described(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    return f"the {type(value).__name__} {value!r:.40}"


def _official_checkpoint(spec: ModelSpec, progressbar: Any):
    if spec.weights is None:
        raise WeightsError(f"{spec.title} has no official download; pick a local checkpoint file.")
    return fetch(spec.weights, progressbar=progressbar)
