"""The loaded model and the current image's segmenter, rebuilt only when what they depend on changes.

Keys include everything a result depends on (model, checkpoint, device; image array, window, colour),
so switching any of them can never reuse a stale embedding or mask.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .loading import load_model
from .predictors.base import Predictor
from .preprocessing import resolve_window
from .segmenter import Segmenter


class Workspace:
    def __init__(self):
        self._predictor: Predictor | None = None
        self._predictor_key = None
        self._segmenter: Segmenter | None = None
        self._segmenter_key = None

    def predictor(
        self, name: str, checkpoint: str | os.PathLike | None, device: str | None, progressbar: Any = False
    ) -> Predictor:
        key = (name, str(checkpoint) if checkpoint else None, device)
        if key != self._predictor_key:
            self.reset()
            self._predictor = load_model(name, checkpoint=checkpoint, device=device, progressbar=progressbar)
            self._predictor_key = key
        return self._predictor

    @property
    def loaded(self) -> Predictor | None:
        return self._predictor

    def segmenter(
        self, predictor: Predictor, image: np.ndarray, rgb: bool, window_choice: str, contrast_limits=None
    ) -> Segmenter:
        """The segmenter for this image and window choice (see ``preprocessing.WINDOW_CHOICES``)."""
        key = (id(predictor), id(image), image.shape, image.dtype, rgb, window_choice, tuple(contrast_limits or ()))
        if key != self._segmenter_key:
            window = resolve_window(window_choice, image, contrast_limits, rgb)
            self._segmenter = Segmenter(predictor, image, window=window, rgb=rgb)
            self._segmenter_key = key
        return self._segmenter

    def reset(self) -> None:
        self._predictor = self._predictor_key = self._segmenter = self._segmenter_key = None
