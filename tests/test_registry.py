"""The model registry: built-in entries, registration, lookup and third-party entry points."""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

import rwth_sam
from rwth_sam.core.models import registry
from rwth_sam.core.models.weights import Weights

BUILT_IN = {
    "mobile_sam_vit_t": "MobileSAM",
    "sam_vit_b": "SAM",
    "sam_vit_l": "SAM",
    "sam_vit_h": "SAM",
    "sam_hq_vit_tiny": "SAM-HQ",
    "sam_hq_vit_b": "SAM-HQ",
    "sam_hq_vit_l": "SAM-HQ",
    "sam_hq_vit_h": "SAM-HQ",
    "sam2.1_hiera_tiny": "SAM 2.1",
    "sam2.1_hiera_small": "SAM 2.1",
    "sam2.1_hiera_base_plus": "SAM 2.1",
    "sam2.1_hiera_large": "SAM 2.1",
}


@pytest.fixture
def isolated_registry(monkeypatch):
    """A private copy of the registry, with entry points not yet loaded; the real one is restored after."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return registry._registry


def make_spec(name: str, title: str | None = None) -> rwth_sam.ModelSpec:
    return rwth_sam.ModelSpec(
        name=name,
        family="Test",
        title=title or f"Test {name}",
        build=lambda: torch.nn.Linear(2, 2),
        make_predictor=lambda module, name, device: (module, name, device),
    )


class FakeEntryPoint:
    def __init__(self, name, load):
        self.name = name
        self._load = load
        self.loaded = 0

    def load(self):
        self.loaded += 1
        return self._load()


def fake_entry_points(monkeypatch, *entries):
    calls = []

    def entry_points(**kwargs):
        calls.append(kwargs)
        return list(entries) if kwargs.get("group") == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", entry_points)
    return calls


# --------------------------------------------------------------------------- built-in entries


def test_built_in_models_are_registered_with_official_weights():
    specs = {spec.name: spec for spec in rwth_sam.model_specs()}
    assert set(BUILT_IN) <= set(specs)
    filenames, sums = set(), set()
    for name, family in BUILT_IN.items():
        spec = specs[name]
        assert spec.family == family
        assert spec.title
        assert callable(spec.build) and callable(spec.make_predictor)
        weights = spec.weights
        assert isinstance(weights, Weights), name
        url = urlparse(weights.url)
        assert url.scheme == "https" and url.netloc, weights.url
        assert weights.size > 1_000_000, name
        assert re.fullmatch(r"[0-9a-f]{64}", weights.sha256), name
        assert weights.filename and "/" not in weights.filename
        assert url.path.endswith(weights.filename), name
        filenames.add(weights.filename)
        sums.add(weights.sha256)
    # distinct files: two models never share (and overwrite) a cache entry
    assert len(filenames) == len(BUILT_IN) and len(sums) == len(BUILT_IN)


def test_built_ins_come_first_and_only_sam_hq_loads_non_strictly():
    names = [spec.name for spec in rwth_sam.model_specs()]
    assert set(names[: len(BUILT_IN)]) == set(BUILT_IN)
    for name in BUILT_IN:
        assert rwth_sam.get_model_spec(name).strict == (not name.startswith("sam_hq_"))


def test_get_model_spec_returns_the_registered_entry():
    spec = rwth_sam.get_model_spec("sam_vit_b")
    assert spec.name == "sam_vit_b" and spec.title == "SAM ViT-B"
    assert spec.weights.filename == "sam_vit_b_01ec64.pth"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(rwth_sam.InputError, match="Unknown model 'sam_vit_x'") as info:
        rwth_sam.get_model_spec("sam_vit_x")
    message = str(info.value)
    for name in BUILT_IN:
        assert name in message
    assert isinstance(info.value, ValueError)  # InputError is also a ValueError
    with pytest.raises(rwth_sam.InputError):
        rwth_sam.load_model("sam_vit_x", pretrained=False)


# --------------------------------------------------------------------------- registration


def test_register_duplicate_and_replace(isolated_registry):
    first = make_spec("test_model", "First")
    assert rwth_sam.register_model(first) is first
    assert rwth_sam.get_model_spec("test_model") is first
    assert rwth_sam.register_model(first) is first  # the same entry again is harmless

    second = make_spec("test_model", "Second")
    with pytest.raises(rwth_sam.InputError, match="already registered"):
        rwth_sam.register_model(second)
    assert rwth_sam.get_model_spec("test_model") is first

    rwth_sam.register_model(second, replace=True)
    assert rwth_sam.get_model_spec("test_model").title == "Second"
    assert "test_model" in [spec.name for spec in rwth_sam.model_specs()]

    rwth_sam.unregister_model("test_model")
    rwth_sam.unregister_model("test_model")  # unregistering twice is harmless
    with pytest.raises(rwth_sam.InputError):
        rwth_sam.get_model_spec("test_model")


def test_a_built_in_name_cannot_be_taken_by_accident(isolated_registry):
    with pytest.raises(rwth_sam.InputError, match="already registered"):
        rwth_sam.register_model(make_spec("sam_vit_b"))
    assert rwth_sam.get_model_spec("sam_vit_b").family == "SAM"


def test_registered_model_loads_through_load_model(isolated_registry):
    rwth_sam.register_model(make_spec("test_linear"))
    module, name, device = rwth_sam.load_model("test_linear", pretrained=False, device="cpu")
    assert isinstance(module, torch.nn.Linear)
    assert name == "test_linear" and device == torch.device("cpu")
    assert not module.training  # wrapped in eval mode


# --------------------------------------------------------------------------- entry points


def test_entry_points_add_models(isolated_registry, monkeypatch):
    single = make_spec("plugin_single")
    many = [make_spec("plugin_a"), make_spec("plugin_b")]
    entries = [
        FakeEntryPoint("factory", lambda: lambda: make_spec("plugin_factory")),
        FakeEntryPoint("spec", lambda: single),
        FakeEntryPoint("list", lambda: many),
        FakeEntryPoint("list_factory", lambda: lambda: [make_spec("plugin_c")]),
    ]
    calls = fake_entry_points(monkeypatch, *entries)

    names = [spec.name for spec in rwth_sam.model_specs()]

    assert calls == [{"group": "rwth_sam.models"}]
    for name in ("plugin_factory", "plugin_single", "plugin_a", "plugin_b", "plugin_c"):
        assert name in names
    assert rwth_sam.get_model_spec("plugin_single") is single
    assert set(BUILT_IN) <= set(names)
    # loaded once, not on every lookup
    rwth_sam.get_model_spec("plugin_a")
    rwth_sam.model_specs()
    assert len(calls) == 1 and all(entry.loaded == 1 for entry in entries)


def test_a_broken_entry_point_warns_and_the_others_still_load(isolated_registry, monkeypatch):
    def broken_import():
        raise ImportError("No module named 'medsam_weights'")

    def broken_factory():
        raise RuntimeError("factory exploded")

    fake_entry_points(
        monkeypatch,
        FakeEntryPoint("before", lambda: make_spec("plugin_before")),
        FakeEntryPoint("broken_import", broken_import),
        FakeEntryPoint("broken_factory", lambda: broken_factory),
        FakeEntryPoint("not_a_spec", lambda: ["just a string"]),
        FakeEntryPoint("clash", lambda: make_spec("sam_vit_b")),
        FakeEntryPoint("after", lambda: make_spec("plugin_after")),
    )

    with pytest.warns(RuntimeWarning) as record:
        names = [spec.name for spec in rwth_sam.model_specs()]

    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    for entry, detail in [
        ("broken_import", "medsam_weights"),
        ("broken_factory", "factory exploded"),
        ("not_a_spec", "ModelSpec"),
        ("clash", "already registered"),
    ]:
        assert any(f"'{entry}'" in m and detail in m for m in messages), (entry, messages)
    assert len(messages) == 4
    assert "plugin_before" in names and "plugin_after" in names
    assert rwth_sam.get_model_spec("sam_vit_b").family == "SAM"  # the clash did not replace it


# ---------------------------------------------------------------------------------------------
# What each family can do


FAMILY_CAPABILITIES = {
    "SAM": rwth_sam.Capabilities(mask_generator=True),
    "MobileSAM": rwth_sam.Capabilities(mask_generator=True),
    "SAM-HQ": rwth_sam.Capabilities(mask_generator=True, hq_tokens=True),
    "SAM 2.1": rwth_sam.Capabilities(mask_generator=True, video_propagation=True),
}


def test_each_built_in_family_declares_its_capabilities():
    for name, family in BUILT_IN.items():
        make = rwth_sam.get_model_spec(name).make_predictor
        predictor_class = make.func if isinstance(make, partial) else make
        assert predictor_class.capabilities == FAMILY_CAPABILITIES[family], name


class OneMaskPredictor(rwth_sam.Predictor):
    """A third party's family: one mask per prompt, no generator, no video predictor."""

    capabilities = rwth_sam.Capabilities(multimask=False)

    def __init__(self):
        super().__init__(torch.nn.Identity(), "one-mask", torch.device("cpu"))
        self.asked_multimask = []

    @property
    def input_size(self) -> int:
        return 64

    def _embed(self, rgb):
        return rwth_sam.Embedding(None, rgb.shape[:2], self.name)

    def _predict(self, embedding, prompts, multimask, all_masks):
        self.asked_multimask.append(multimask)
        shape = embedding.image_size
        return rwth_sam.Prediction(
            np.ones((1, *shape), bool), np.ones(1, np.float32), np.zeros((1, 16, 16), np.float32)
        )


def test_a_capability_the_predictor_lacks_is_refused_with_its_name():
    predictor = OneMaskPredictor()
    embedding = predictor.embed(np.zeros((8, 8, 3), np.uint8))
    lone_point = rwth_sam.Prompts.make(points=[(2, 2)])
    assert predictor.predict(embedding, lone_point).mask.shape == (8, 8)
    assert predictor.asked_multimask == [False]  # a lone point asks for one mask here
    with pytest.raises(rwth_sam.InputError, match="^one-mask predicts one mask per prompt: it has no multimask output"):
        predictor.predict(embedding, lone_point, multimask=True)
    with pytest.raises(rwth_sam.InputError, match="^one-mask has no automatic mask generator.$"):
        predictor.make_mask_generator({})
    with pytest.raises(rwth_sam.InputError, match="^one-mask has no video predictor.$"):
        predictor.video_predictor()
