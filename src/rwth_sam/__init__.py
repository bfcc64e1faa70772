"""rwth-sam: Segment Anything (SAM, SAM-HQ, MobileSAM, SAM 2) for 2D images and 3D volumes.

The Python API needs neither Qt nor napari::

    import rwth_sam
    model = rwth_sam.load_model("mobile_sam_vit_t")
    segmenter = rwth_sam.Segmenter(model, volume)
    plane = segmenter.plane(axis=0, index=40)
    mask = segmenter.predict(plane, points=[(120, 80)], labels=[1]).mask
"""

from . import _triton_guard  # noqa: F401  (first: before anything imports torch)
from .core.coordinates import LayerGeometry, SlicePlane
from .core.errors import InputError, RwthSamError, WeightsError
from .core.loading import load_model, wrap_module
from .core.predictors import Embedding, Prediction, Predictor, Prompts
from .core.preprocessing import CT_WINDOWS, IntensityWindow, to_rgb
from .core.registry import ModelSpec, get_model_spec, model_specs, register_model, unregister_model
from .core.segmenter import EmbeddingCache, Segmenter
from .core.weights import Weights

__version__ = "0.1.0"

__all__ = [
    "CT_WINDOWS",
    "Embedding",
    "EmbeddingCache",
    "InputError",
    "IntensityWindow",
    "LayerGeometry",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "Prompts",
    "RwthSamError",
    "Segmenter",
    "SlicePlane",
    "Weights",
    "WeightsError",
    "get_model_spec",
    "load_model",
    "model_specs",
    "register_model",
    "to_rgb",
    "unregister_model",
    "wrap_module",
]
