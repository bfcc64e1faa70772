"""The click prompts of one slice (points, labels, a box, the selected points) and their latest mask.

Prompts arrive faster than a model answers, so every edit bumps ``version``; a prediction made from
an older version or another identity is dropped by ``accept``. The session belongs to one
``SessionIdentity`` (image, model, intensity window): ``bind`` starts afresh when the image, its
data or the model changes, and keeps the prompts (to be segmented again) when only the window changes. It knows nothing of Qt or napari: the widget is its
view, drawing it on its events and forwarding the user's clicks and keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from psygnal import Signal

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.embeddings.identity import WINDOW, SessionIdentity
from rwth_sam.core.models.predictors.base import Prediction

Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PredictionRequest:
    """A snapshot of the prompts for a worker: what to predict, and the version and identity it answers."""

    version: int
    identity: SessionIdentity | None
    plane: SlicePlane
    points: tuple[Point, ...]
    labels: tuple[int, ...]
    box: Box | None
    mask_logits: np.ndarray | None  # the previous prediction's, to refine it

    def predict(self, segmenter) -> Prediction:
        return segmenter.predict(
            self.plane, points=list(self.points) or None, labels=list(self.labels) or None, box=self.box,
            mask_logits=self.mask_logits,
        )  # fmt: skip


class PromptSession:
    """Points (1 positive, 0 negative), at most one box, on one slice; the points selected for
    deletion; the last prediction accepted (its logits refine the next one)."""

    changed = Signal()  # the prompts were edited: redraw them and predict again (or clear, when empty)
    selection_changed = Signal()  # points were selected or deselected: redraw them
    predicted = Signal(object)  # a prediction of the current prompts arrived (the Prediction)
    cleared = Signal()  # prompts and prediction are gone: redraw, clear the preview

    def __init__(self):
        self.identity: SessionIdentity | None = None
        self.version = 0
        self.plane: SlicePlane | None = None
        self._reset()

    def _reset(self) -> None:
        self.points: list[Point] = []
        self.labels: list[int] = []
        self.box: Box | None = None
        self.selected: set[int] = set()
        self.prediction: Prediction | None = None

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    # ------------------------------------------------------------------ identity
    def bind(self, identity: SessionIdentity) -> None:
        """Tie the session to ``identity``: another image, data or model starts afresh; another
        window only drops the prediction (what the model sees changed) and segments the prompts again."""
        change, self.identity = identity.change_from(self.identity), identity
        if change == WINDOW:
            self.version += 1
            self.prediction = None
            if not self.empty:
                self.changed.emit()
        elif change is not None:
            self.plane = None
            self.clear()

    # ------------------------------------------------------------------ edits
    def start_plane(self, plane: SlicePlane) -> None:
        """Prompts belong to one slice: prompting another slice starts afresh."""
        if plane != self.plane:
            self.plane = plane
            self.clear()

    def add_point(self, plane: SlicePlane, x: float, y: float, positive: bool) -> None:
        self.start_plane(plane)
        self.points.append((float(x), float(y)))
        self.labels.append(int(positive))
        self._edited()

    def set_box(self, plane: SlicePlane, x0: float, y0: float, x1: float, y1: float) -> bool:
        """A dragged box, clipped to the slice, replaces the previous box; one under a pixel wide or
        high is no box (False: nothing changed)."""
        height, width = plane.size
        x0, x1 = np.clip([x0, x1], 0, width - 1)
        y0, y1 = np.clip([y0, y1], 0, height - 1)
        if abs(x1 - x0) < 1 or abs(y1 - y0) < 1:
            return False
        self.start_plane(plane)
        self.box = (float(min(x0, x1)), float(min(y0, y1)), float(max(x0, x1)), float(max(y0, y1)))
        self._edited()
        return True

    def toggle_point_near(self, plane: SlicePlane, x: float, y: float, radius: float) -> None:
        """Select the point nearest (x, y) on this slice, or deselect it if selected, if within ``radius``."""
        if not self.points or plane != self.plane:
            return
        distances = np.hypot(*(np.asarray(self.points) - (x, y)).T)
        nearest = int(np.argmin(distances))
        if distances[nearest] <= radius:
            self.selected ^= {nearest}
            self.selection_changed.emit()

    def delete_selected(self) -> None:
        """Drop the selected points; the rest is predicted afresh (the last mask came from them too)."""
        if not self.selected:
            return
        keep = [i for i in range(len(self.points)) if i not in self.selected]
        self.points = [self.points[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        self.selected = set()
        self.prediction = None
        self._edited()

    def clear(self) -> None:
        """No prompts, no prediction (the slice stays the one prompted last)."""
        self.version += 1
        self._reset()
        self.cleared.emit()

    def _edited(self) -> None:
        self.version += 1
        if self.empty:
            self.prediction = None
        self.changed.emit()

    # ------------------------------------------------------------------ predictions
    def request(self) -> PredictionRequest | None:
        """What to predict now (None: there are no prompts)."""
        if self.empty or self.plane is None:
            return None
        logits = None if self.prediction is None else self.prediction.best_logits
        return PredictionRequest(
            self.version, self.identity, self.plane, tuple(self.points), tuple(self.labels), self.box, logits
        )

    def accept(self, request: PredictionRequest, prediction: Prediction) -> bool:
        """Keep ``prediction`` if it answers the current prompts under the current identity (False:
        they changed meanwhile, and a newer request is on its way, or they are gone)."""
        if request.version != self.version or request.identity != self.identity:
            return False
        self.prediction = prediction
        self.predicted.emit(prediction)
        return True
