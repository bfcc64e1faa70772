"""One predictor interface over every Segment Anything family."""

from rwth_sam.core.models.predictors.base import Capabilities, Embedding, MaskGenerator, Prediction, Predictor, Prompts

__all__ = ["Capabilities", "Embedding", "MaskGenerator", "Prediction", "Predictor", "Prompts"]
