"""What the automatic and 3D panels may use of the main widget: a small, typed context.

The panels are views of their core sessions; for everything else (the model, the image, the target
labels layer, the preview, the status line) they go through this protocol, which ``SamWidget``
implements, instead of reaching into the widget's members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import napari

    from rwth_sam.core.coordinates import SlicePlane
    from rwth_sam.core.embeddings.segmenter import Segmenter
    from rwth_sam.core.labels.profiles import SegmentationClass
    from rwth_sam.core.tasks.prompt_session import PromptSession
    from rwth_sam.ui.runner import JobBar, LatestJobRunner


def full_resolution(image: napari.layers.Image):
    """The array a model segments: the image's data, or the finest level of a multiscale (pyramid) layer."""
    return image.data[0] if image.multiscale else image.data


@dataclass(frozen=True)
class ModelRequest:
    """What a worker needs to get the segmenter, read on the GUI thread (widgets and layers are not
    thread-safe). ``download`` is the job's own bar when the model must be downloaded first: hand
    it to the runner with the job (``bar=``), which shows it while the job waits and runs."""

    model: tuple  # (name, checkpoint or None, device)
    image: tuple  # (data, rgb, window choice, contrast limits)
    download: JobBar | None = None


class PanelContext(Protocol):
    viewer: napari.viewer.Viewer
    runner: LatestJobRunner
    prompts: PromptSession  # the click prompts (boxes and points the 3D panel uses)

    # ------------------------------------------------------------------ messages
    def say(self, message: str) -> None:
        """Show ``message`` in the widget's status line."""

    def keep(self, message: str) -> None:
        """Show ``message`` and keep it at the top of the dock until the user dismisses it (what a run wrote)."""

    def reveal(self, control) -> None:
        """Scroll the dock so that ``control`` is in view (a run's progress and *Cancel* when it starts)."""

    def report_error(self, error: Exception) -> None:
        """Tell the user what went wrong (status line and a notification); nothing else changes."""

    def guard(self, what: str, handler: Callable) -> Callable:
        """``handler`` for a GUI signal: whatever it raises becomes a message saying ``what`` failed."""

    # ------------------------------------------------------------------ model work
    @property
    def model_loaded(self) -> bool:
        """Whether a model is loaded (background work waits for the first click to load one)."""

    def model_request(self) -> ModelRequest:
        """What a worker needs to get the segmenter, read on the GUI thread."""

    def segmenter_for(self, request: ModelRequest) -> Segmenter:
        """In a worker: the segmenter of the request's (image, model, window), loading the model if needed."""

    # ------------------------------------------------------------------ image and slices
    @property
    def image_layer(self) -> napari.layers.Image | None: ...

    def image_shape(self) -> tuple[int, ...]:
        """The picked image's spatial shape (refusing what cannot be segmented)."""

    def plane_under(self, world_position) -> tuple[SlicePlane, float, float]:
        """The displayed slice of the image at a world position, and (x, y) on it."""

    # ------------------------------------------------------------------ results
    def add_labels_for(
        self, image: napari.layers.Image, name: str, shape: tuple[int, ...], **layer_options
    ) -> napari.layers.Labels: ...

    def target_labels(self) -> napari.layers.Labels:
        """The labels layer results go to, checked against the image."""

    def submit_value(self, labels: napari.layers.Labels, taken: Iterable[int] = ()) -> int:
        """The label value of the next object (a new id in instance mode, above ``taken`` too)."""

    @property
    def overwrite(self) -> bool:
        """Whether results may overwrite other labels."""

    @property
    def selected_class(self) -> SegmentationClass | None: ...

    def profile_class(self, name: str) -> SegmentationClass | None:
        """The selected profile's class of that name, if any."""

    def record_class(self, labels: napari.layers.Labels, value: int, segment_class) -> None:
        """Name and colour ``value`` in ``labels`` by its class (as a submit does)."""

    def record_submission(self, labels: napari.layers.Labels, value: int, written: int, kept: int) -> None:
        """After a write: record its class and say what was written."""

    # ------------------------------------------------------------------ preview
    def show_preview(self, plane: SlicePlane | None, mask: np.ndarray | None) -> napari.layers.Labels | None:
        """Show ``mask`` on ``plane`` in the green preview (None: clear it)."""

    def preview_mask(self, plane: SlicePlane) -> np.ndarray:
        """The preview's mask on ``plane`` as it is now, brush edits included."""

    def clear_prompts(self) -> None: ...
