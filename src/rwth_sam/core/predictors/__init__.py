"""One predictor interface over every Segment Anything family."""

from .base import Embedding, Prediction, Predictor, Prompts

__all__ = ["Embedding", "Prediction", "Predictor", "Prompts"]
