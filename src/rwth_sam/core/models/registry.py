"""The model registry: every loadable model is a ``ModelSpec``, registered by name.

Built-in entries cover SAM, SAM-HQ, MobileSAM and SAM 2.1. Other packages add entries (a fine-tuned
checkpoint such as MedSAM) without editing rwth-sam, either by calling ``register_model`` or by
declaring an entry point in the ``rwth_sam.models`` group that resolves to a ``ModelSpec``, a list
of them, or a callable returning either.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from importlib.metadata import entry_points

from rwth_sam.core.errors import InputError
from rwth_sam.core.models.builtin import BUILTIN_MODELS
from rwth_sam.core.models.spec import ModelSpec

__all__ = ["ENTRY_POINT_GROUP", "ModelSpec", "get_model_spec", "model_specs", "register_model", "unregister_model"]

ENTRY_POINT_GROUP = "rwth_sam.models"


_registry: dict[str, ModelSpec] = {spec.name: spec for spec in BUILTIN_MODELS}  # built-in first
_entry_points_loaded = False


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add a model to the registry (``replace`` to override an existing name)."""
    if not replace and spec.name in _registry and _registry[spec.name] != spec:
        raise InputError(f"A model named '{spec.name}' is already registered.")
    _registry[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    _registry.pop(name, None)


def model_specs() -> list[ModelSpec]:
    """All registered models, built-in first."""
    _ensure_loaded()
    return list(_registry.values())


def get_model_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _registry[name]
    except KeyError:
        raise InputError(f"Unknown model '{name}'. Known models: {', '.join(_registry)}.") from None


def _ensure_loaded() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            for spec in _as_specs(entry_point.load()):
                register_model(spec)
        except Exception as error:  # a broken third-party entry must not hide the others
            warnings.warn(f"Skipping model entry point '{entry_point.name}': {error}", RuntimeWarning, stacklevel=2)


def _as_specs(obj) -> Iterable[ModelSpec]:
    if callable(obj) and not isinstance(obj, ModelSpec):
        obj = obj()
    if isinstance(obj, ModelSpec):
        return [obj]
    specs = list(obj)
    if not all(isinstance(spec, ModelSpec) for spec in specs):
        raise TypeError("an rwth_sam.models entry point must give ModelSpec objects")
    return specs
