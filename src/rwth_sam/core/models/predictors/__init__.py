"""One predictor interface over every Segment Anything family."""

from rwth_sam.core.models.predictors.base import Embedding, Prediction, Predictor, Prompts

__all__ = ["Embedding", "Prediction", "Predictor", "Prompts"]
