"""Shared fixtures: small random-weight models (seeded, built once per session) and real data."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import rwth_sam  # imports torch before napari creates its GL context (see rwth_sam._triton_guard)
from rwth_sam.core.models.builtin import sam2_spec
from rwth_sam.core.models.predictors.base import Embedding, Prediction, Predictor
from rwth_sam.core.models.predictors.sam2 import backbone_feature_sizes

# With one thread, torch upsamples 3 channels with another kernel than 1 channel (ulp differences),
# so upstream (3 candidates) and rwth-sam (the best one) could differ where a logit is within an ulp
# of 0. Two threads use one kernel for both, which is what the equality tests compare.
if torch.get_num_threads() == 1:
    torch.set_num_threads(2)

SHARED_DATA = Path(os.environ.get("RWTH_SAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# SAM 2.1 tiny at 256 pixels: the real architecture, cheap enough for every test run.
SAM2_TINY_256 = "sam2.1_hiera_tiny_256"
rwth_sam.register_model(
    sam2_spec(SAM2_TINY_256, "SAM 2.1 Hiera-T (256 px, tests)", "configs/sam2.1/sam2.1_hiera_t.yaml", None, image_size=256),
    replace=True,
)

SMALL_MODELS = ["mobile_sam_vit_t", "sam_hq_vit_tiny", SAM2_TINY_256]
LARGE_MODELS = [
    "sam_vit_b", "sam_vit_l", "sam_vit_h",
    "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h",
    "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
]

_models: dict[str, rwth_sam.Predictor] = {}


def random_model(name: str) -> rwth_sam.Predictor:
    """The named architecture with seeded random weights, on the CPU, built once per session."""
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = rwth_sam.load_model(name, pretrained=False, device="cpu")
    return _models[name]


@pytest.fixture(scope="session")
def mobile_sam():
    return random_model("mobile_sam_vit_t")


@pytest.fixture(scope="session")
def sam2_tiny():
    return random_model(SAM2_TINY_256)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m real_data` picks these tests
def pytest_collection_modifyitems(config, items):
    """Tests that use the real data are marked ``real_data``, and skip before any fixture is set up
    when it is absent.

    Skipping inside the ``shared_data`` fixture came too late for GUI tests: napari's viewer fixture,
    set up first, then errored at teardown ("no attribute 'rep_call'"), so a user's clone failed.
    """
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA} (../shared/data is absent in a user's checkout)")
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
            if not SHARED_DATA.is_dir():
                item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (or $RWTH_SAM_SHARED_DATA): tests asking for it skip when it is absent."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """The seeded random SAM 2 test model, saved as a checkpoint the widget loads."""
    path = tmp_path_factory.mktemp("weights") / "sam2_tiny_256.pt"
    torch.save({"model": random_model(SAM2_TINY_256).model.state_dict()}, path)
    return path


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown napari viewer; torch's thread count (the widget leaves a core free) is restored after."""
    threads = torch.get_num_threads()
    yield make_napari_viewer(show=True)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_traceback_dialogs(request, monkeypatch):
    """No test may end with an exception in napari's exception hook (in the app: its traceback
    dialog). pytest-qt already fails a test whose Qt slot raised; this also catches what reaches
    napari's notification manager as an exception. (The Qt-free tier never imports napari.)"""
    if "napari" not in sys.modules and "gui" not in request.keywords:
        yield
        return
    from napari.utils.notifications import ErrorNotification, notification_manager

    received = []
    monkeypatch.setattr(notification_manager, "receive_error", lambda *error, **_: received.append(error))
    before = len(notification_manager.records)
    yield
    errors = [record for record in notification_manager.records[before:] if isinstance(record, ErrorNotification)]
    assert not received and not errors, f"napari's exception hook got {received or errors}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- the oracle model
ORACLE = "oracle (tests)"


class OraclePredictor(Predictor):
    """Answers a box with the true region under it: the truth slice is found from the embedded pixels."""

    truth_by_slice: dict[bytes, np.ndarray] = {}
    seconds_per_mask = 0.0  # as slow as a real model, for tests that act while a run goes on

    @property
    def input_size(self) -> int:
        return 1024

    def _embed(self, rgb):
        return Embedding(hashlib.blake2b(rgb.tobytes()).digest(), rgb.shape[:2], self.name)

    def _predict(self, embedding, prompts, multimask, all_masks):
        time.sleep(self.seconds_per_mask)
        truth = self.truth_by_slice[embedding.features]
        if prompts.box is None:  # a click: the true region under the first point
            x, y = np.round(prompts.points[0]).astype(int)
            x0, y0, x1, y1 = x, y, x, y
        else:
            x0, y0, x1, y1 = np.round(prompts.box).astype(int)
        inside = truth[y0 : y1 + 1, x0 : x1 + 1]
        values, counts = np.unique(inside[inside > 0], return_counts=True)
        mask = np.zeros(truth.shape, bool)
        if len(values):
            components, _ = ndimage.label(truth == values[np.argmax(counts)])
            touched = np.unique(components[y0 : y1 + 1, x0 : x1 + 1])
            mask = np.isin(components, touched[touched > 0])
        return Prediction(mask[None], np.array([1.0], np.float32), np.zeros((1, 256, 256), np.float32))


def stand_in_model(name: str, predictor_class: type, folder: Path):
    """Register a stand-in model (a predictor class on a one-weight module); yields its checkpoint."""
    rwth_sam.register_model(
        rwth_sam.ModelSpec(
            name=name, family="test", title=name, build=lambda: torch.nn.Linear(1, 1),
            make_predictor=lambda module, name, device: predictor_class(module, name, device),
        ),
        replace=True,
    )  # fmt: skip
    path = folder / "stand_in.pt"
    torch.save(torch.nn.Linear(1, 1).state_dict(), path)
    yield path
    rwth_sam.unregister_model(name)


@pytest.fixture(scope="module")
def oracle_checkpoint(tmp_path_factory):
    yield from stand_in_model(ORACLE, OraclePredictor, tmp_path_factory.mktemp("oracle"))


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def count_embeds(monkeypatch, predictor) -> list:
    """Wrap ``predictor._embed``: the returned list grows by one per encoder run."""
    calls = []
    original = predictor._embed

    def counted(rgb):
        calls.append(1)
        return original(rgb)

    monkeypatch.setattr(predictor, "_embed", counted)
    return calls


def upstream_predictor(model: rwth_sam.Predictor):
    """A fresh upstream predictor of the model's own package, around the same module."""
    family = rwth_sam.get_model_spec(model.name).family
    if family == "SAM":
        from segment_anything import SamPredictor
    elif family == "SAM-HQ":
        from segment_anything_hq import SamPredictor
    elif family == "MobileSAM":
        from mobile_sam import SamPredictor
    elif family == "SAM 2.1":
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor = SAM2ImagePredictor(model.model)
        predictor._bb_feat_sizes = backbone_feature_sizes(model.model.image_size)
        return predictor
    else:
        raise AssertionError(f"no upstream predictor known for {family}")
    return SamPredictor(model.model)


def upstream_predict(predictor, **kwargs):
    """upstream ``predict`` as numpy (SAM-HQ called with hq_token_only=False, as the plugin does)."""
    if "hq_token_only" in inspect.signature(predictor.predict).parameters:
        kwargs["hq_token_only"] = False
    masks, scores, logits = predictor.predict(**kwargs)
    return tuple(np.asarray(a) for a in (masks, scores, logits))


# Automatic mode on random weights: a coarse grid and no quality thresholds, so that masks come out.
PERMISSIVE = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
