"""rwth-sam: Segment Anything (SAM, SAM-HQ, MobileSAM, SAM 2) for 2D images and 3D volumes.

The Python API needs neither Qt nor napari::

    import rwth_sam
    model = rwth_sam.load_model("mobile_sam_vit_t")
    segmenter = rwth_sam.Segmenter(model, volume)
    plane = segmenter.plane(axis=0, index=40)
    mask = segmenter.predict(plane, points=[(120, 80)], labels=[1]).mask
"""

from rwth_sam import _triton_guard  # noqa: F401  (first: before anything imports torch)
from rwth_sam.core.coordinates import LayerGeometry, SlicePlane
from rwth_sam.core.embeddings.segmenter import EmbeddingCache, Segmenter
from rwth_sam.core.errors import InputError, RwthSamError, WeightsError
from rwth_sam.core.models.loading import load_model, wrap_module
from rwth_sam.core.models.predictors import Capabilities, Embedding, Prediction, Predictor, Prompts
from rwth_sam.core.models.registry import ModelSpec, get_model_spec, model_specs, register_model, unregister_model
from rwth_sam.core.models.weights import Weights
from rwth_sam.core.preprocessing import CT_WINDOWS, IntensityWindow, to_rgb

__version__ = "0.1.0"

__all__ = [
    "CT_WINDOWS",
    "Capabilities",
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
