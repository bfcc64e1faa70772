"""Embedding caches: LRU within a byte budget, keys that rule out stale embeddings, prefetch, disk cache.

Most tests use a fake predictor (an embedding of 1000 bytes in microseconds); the ones that need
the real thing use SAM 2.1 tiny at 256 pixels with random weights (~0.2 s per slice on a CPU).
"""

from __future__ import annotations

import gc

import numpy as np
import torch

import rwth_sam
from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.embeddings.cache import EmbeddingCache
from rwth_sam.core.embeddings.disk_cache import DiskEmbeddingCache
from rwth_sam.core.embeddings.identity import SliceKey, image_token, renew_image_token
from rwth_sam.core.embeddings.segmenter import EmbeddingCache as ReExported
from rwth_sam.core.embeddings.segmenter import Segmenter
from rwth_sam.core.embeddings.workspace import Workspace
from rwth_sam.core.models.predictors.base import Embedding, Predictor
from rwth_sam.core.preprocessing import CONTRAST_LIMITS, IntensityWindow

from conftest import count_embeds

FAKE_BYTES = 1000


class FakePredictor(Predictor):
    """Embeds a slice into 250 float32 values (1000 bytes): the slice's top-left value, repeated."""

    def __init__(self, name: str = "fake"):
        super().__init__(torch.nn.Identity(), name, torch.device("cpu"))
        self.embedded: list[int] = []  # the top-left value of each slice embedded, in order

    @property
    def input_size(self) -> int:
        return 64

    def _embed(self, rgb):
        self.embedded.append(int(rgb[0, 0, 0]))
        return Embedding(torch.full((FAKE_BYTES // 4,), float(rgb[0, 0, 0])), tuple(rgb.shape[:2]), self.name)

    def _predict(self, embedding, prompts, multimask, all_masks):
        raise NotImplementedError


def fake(nbytes: int = FAKE_BYTES, value: float = 0.0) -> Embedding:
    return Embedding(torch.full((nbytes // 4,), value), (4, 4), "m")


def slices_volume(count: int = 10) -> np.ndarray:
    """A volume whose slice k along axis 0 holds the value k (so a slice is recognised by its pixels)."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 8, 9)).copy()


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def structured_volume(dtype=np.uint8, shape=(5, 48, 56)) -> np.ndarray:
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    blob = ((y - 24) / 14.0) ** 2 + ((x - 28) / 18.0) ** 2 < 1.0
    volume = 50 + 130 * blob + 5 * z + rng.normal(0, 10, shape)
    return np.clip(np.rint(volume), 0, 255).astype(dtype)


# ----------------------------------------------------------------------------- memory cache
def test_segmenter_module_re_exports_the_cache():
    assert ReExported is EmbeddingCache is rwth_sam.EmbeddingCache


def test_lru_eviction_within_byte_budget():
    cache = EmbeddingCache(max_bytes=3 * FAKE_BYTES)
    for key in "abc":
        cache.put(key, fake())
        assert cache.nbytes <= cache.max_bytes
    assert cache.get("a") is not None  # a is now the most recently used: b goes first
    cache.put("d", fake())
    assert cache.keys() == ["c", "a", "d"] and "b" not in cache
    assert cache.nbytes == 3 * FAKE_BYTES
    assert "c" in cache and cache.peek("c") is not None  # neither touches: c still goes next
    cache.put("e", fake())
    assert cache.keys() == ["a", "d", "e"]

    cache.put("a", fake(2 * FAKE_BYTES))  # replacing an entry counts its new size
    assert cache.nbytes <= cache.max_bytes and "a" in cache and cache.nbytes == 3 * FAKE_BYTES
    assert cache.keys() == ["e", "a"]

    cache.put("huge", fake(5 * FAKE_BYTES))  # a single entry over budget is kept, alone
    assert cache.keys() == ["huge"] and cache.nbytes == 5 * FAKE_BYTES
    cache.put("f", fake())
    assert cache.keys() == ["f"] and cache.nbytes == FAKE_BYTES
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_demoted_entry_is_evicted_first():
    cache = EmbeddingCache(max_bytes=3 * FAKE_BYTES)
    for key in "abc":
        cache.put(key, fake())
    cache.demote("c")  # the most recently used, but done with
    cache.demote("missing")  # nothing to do
    cache.put("d", fake())
    assert cache.keys() == ["a", "b", "d"]


def test_pinned_entries_are_not_evicted_by_unpinned_ones():
    cache = EmbeddingCache(max_bytes=2 * FAKE_BYTES)
    cache.pin("shown")
    cache.put("shown", fake())
    for key in "abcd":
        cache.put(key, fake())
        assert "shown" in cache and key in cache and cache.nbytes <= cache.max_bytes
    assert cache.keys() == ["shown", "d"]
    cache.pin("d")  # d is pinned too: the budget is full of pinned entries
    cache.put("e", fake())  # e does not fit beside them and is not kept
    assert cache.keys() == ["shown", "d"] and cache.nbytes <= cache.max_bytes
    cache.unpin("d")
    cache.put("e", fake())
    assert cache.keys() == ["shown", "e"]
    cache.unpin("shown")
    cache.put("f", fake(2 * FAKE_BYTES))
    assert cache.keys() == ["f"]


def test_image_tokens_are_never_reused():
    first = np.zeros((4, 4))
    token, address = image_token(first), id(first)
    assert image_token(first) == token
    del first
    gc.collect()
    for _ in range(200):  # a new array of the same shape usually lands at the freed address
        other = np.zeros((4, 4))
        if id(other) == address:
            break
    assert image_token(other) != token


def test_invalidated_or_freed_images_leave_the_cache():
    predictor = FakePredictor()
    cache = EmbeddingCache()
    image = slices_volume()
    segmenter = Segmenter(predictor, image, cache=cache)
    plane = segmenter.plane(0, 3)
    stale_key = segmenter.key(plane)
    segmenter.embed(plane)
    assert segmenter.is_embedded(plane)

    renew_image_token(image)  # the data changed in place
    assert not segmenter.is_embedded(plane) and cache.get(stale_key) is None and len(cache) == 0
    cache.put(stale_key, fake())  # an embedding of the old data finishing late is thrown away
    assert len(cache) == 0

    segmenter.embed(plane)
    assert len(cache) == 1
    del segmenter, image
    gc.collect()
    cache.get("anything")  # a freed image's embeddings go at the cache's next use
    assert len(cache) == 0


# ----------------------------------------------------------------------------- keys: nothing stale
def test_contrast_change_re_embeds(monkeypatch, sam2_tiny):
    calls = count_embeds(monkeypatch, sam2_tiny)
    volume = structured_volume(np.int16)
    cache = EmbeddingCache()
    plane = SlicePlane.of(volume.shape, 0, 2)
    window = IntensityWindow(0.0, 255.0)

    first = Segmenter(sam2_tiny, volume, window=window, cache=cache)
    embedding = first.embed(plane)
    assert len(calls) == 1
    same = Segmenter(sam2_tiny, volume, window=IntensityWindow(0.0, 255.0), cache=cache)
    assert same.embed(plane) is embedding and len(calls) == 1  # the same window reuses it

    contrast = Segmenter(sam2_tiny, volume, window=IntensityWindow(40.0, 200.0), cache=cache)
    assert not contrast.is_embedded(plane)
    assert contrast.embed(plane) is not embedding and len(calls) == 2
    assert contrast.key(plane) != first.key(plane) and len(cache) == 2


def test_switching_model_or_image_gives_another_key(monkeypatch):
    volume = slices_volume()
    cache = EmbeddingCache()
    plane = SlicePlane.of(volume.shape, 0, 1)
    model = FakePredictor("model")
    segmenter = Segmenter(model, volume, cache=cache)
    embedding = segmenter.embed(plane)

    # the same model name with another instance (e.g. another checkpoint): a new key, a new embedding
    other_model = FakePredictor("model")
    calls = count_embeds(monkeypatch, other_model)
    switched = Segmenter(other_model, volume, cache=cache)
    assert switched.key(plane) != segmenter.key(plane) and not switched.is_embedded(plane)
    assert switched.embed(plane) is not embedding and len(calls) == 1

    # another image of the same shape and dtype (and even identical content): another key
    calls = count_embeds(monkeypatch, model)
    other_image = Segmenter(model, volume.copy(), cache=cache)
    assert other_image.key(plane) != segmenter.key(plane) and not other_image.is_embedded(plane)
    other_image.embed(plane)
    assert len(calls) == 1 and len(cache) == 3

    # the transposed display and another slicing axis are other slices; the same plane is the same key
    assert segmenter.key(SlicePlane(volume.shape, 2, 1, 0, 1)) != segmenter.key(plane)
    assert segmenter.key(SlicePlane.of(volume.shape, 1, 1)) != segmenter.key(plane)
    assert segmenter.key(SlicePlane.of(volume.shape, 0, 1)) == segmenter.key(plane)

    third_model = FakePredictor("model")
    Segmenter(third_model, volume, cache=cache).embed(plane)
    assert len(cache) == 4
    del third_model  # a freed model's embeddings leave the cache
    gc.collect()
    assert cache.get(segmenter.key(plane)) is embedding and len(cache) == 3


def test_workspace_shares_the_cache_and_invalidates(monkeypatch):
    predictor = FakePredictor()
    calls = count_embeds(monkeypatch, predictor)
    volume = slices_volume()
    workspace = Workspace()
    plane = SlicePlane.of(volume.shape, 0, 2)

    shown = workspace.segmenter(predictor, volume, False, CONTRAST_LIMITS, (0, 255))
    shown.embed(plane)
    brighter = workspace.segmenter(predictor, volume, False, CONTRAST_LIMITS, (0, 180))
    assert brighter is not shown and brighter.cache is shown.cache is workspace.cache
    brighter.embed(plane)
    assert len(calls) == 2 and len(workspace.cache) == 2
    back = workspace.segmenter(predictor, volume, False, CONTRAST_LIMITS, (0, 255))
    back.embed(plane)  # the first window's embedding is still there
    assert len(calls) == 2

    volume[2, 0:4, 0:4] = 9  # edited in place
    assert workspace.invalidate_image(volume) == 2 and len(workspace.cache) == 0
    again = workspace.segmenter(predictor, volume, False, CONTRAST_LIMITS, (0, 255))
    assert again is not back  # rebuilt: a percentile window would depend on the data
    again.embed(plane)
    assert len(calls) == 3 and predictor.embedded[-1] == 9
    workspace.reset()
    assert len(workspace.cache) == 0 and workspace.loaded is None


# ----------------------------------------------------------------------------- prefetch
def test_prefetch_order():
    segmenter = Segmenter(FakePredictor(), slices_volume(10))

    def order(plane, radius, within=None):
        return [p.index for p in segmenter.prefetch_order(plane, radius, within)]

    assert order(segmenter.plane(0, 4), 2) == [4, 5, 3, 6, 2]
    assert order(segmenter.plane(0, 4), 3, within=(3, 5)) == [4, 5, 3]  # a 3D range, from its middle
    assert order(segmenter.plane(0, 1), 9, within=(-4, 2)) == [1, 2, 0]
    assert order(segmenter.plane(0, 0), 2) == [0, 1, 2]
    assert order(segmenter.plane(0, 9), 3) == [9, 8, 7, 6]
    assert order(segmenter.plane(0, 4), 0) == [4]
    transposed = SlicePlane(segmenter.shape, row_axis=2, col_axis=1, axis=0, index=4)
    assert all((p.row_axis, p.col_axis) == (2, 1) for p in segmenter.prefetch_order(transposed, 1))
    assert [p.index for p in segmenter.prefetch_order(segmenter.plane(1, 7), 1)] == [7, 6]  # axis 1 has 8

    segmenter.embed(segmenter.plane(0, 5))
    segmenter.embed(segmenter.plane(0, 2))
    assert order(segmenter.plane(0, 4), 2) == [4, 3, 6]  # cached ones skipped
    segmenter.embed(segmenter.plane(0, 4))
    assert order(segmenter.plane(0, 4), 2) == [3, 6]  # the shown one cached: neighbours only

    flat = Segmenter(FakePredictor(), np.zeros((8, 9), np.uint8))
    assert flat.prefetch_order(flat.plane(), 3) == [flat.plane()]
    flat.embed(flat.plane())
    assert flat.prefetch_order(flat.plane(), 3) == []


def test_prefetch_embeds_shown_first_and_stops_when_asked():
    predictor = FakePredictor()
    segmenter = Segmenter(predictor, slices_volume(10))
    embedded = segmenter.prefetch(segmenter.plane(0, 4), radius=2)
    assert predictor.embedded == [4, 5, 3, 6, 2] == [p.index for p in embedded]

    predictor.embedded.clear()
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 2  # the user moved on after two slices

    embedded = segmenter.prefetch(segmenter.plane(0, 6), radius=3, should_stop=should_stop)
    # 6, 5 and 4 are cached: 7 and 8 are embedded, then the stop is honoured before 9
    assert predictor.embedded == [7, 8] and [p.index for p in embedded] == [7, 8] and len(asked) == 3
    assert segmenter.prefetch(segmenter.plane(0, 0), radius=1, should_stop=lambda: True) == []


def test_prefetch_never_evicts_the_shown_slice():
    predictor = FakePredictor()
    segmenter = Segmenter(predictor, slices_volume(10), cache=EmbeddingCache(max_bytes=3 * FAKE_BYTES))
    embedded = segmenter.prefetch(segmenter.plane(0, 5), radius=3)
    assert [p.index for p in embedded] == [5, 6, 4]  # room for three: the shown one and the nearest
    assert segmenter.is_embedded(segmenter.plane(0, 5)) and segmenter.cache.nbytes <= 3 * FAKE_BYTES
    assert segmenter.cache.keys()[-1] == segmenter.key(segmenter.plane(0, 5))  # most recently used

    embedded = segmenter.prefetch(segmenter.plane(0, 8), radius=3)  # the user jumped
    assert [p.index for p in embedded] == [8, 9, 7]
    assert {k.index for k in segmenter.cache.keys()} == {7, 8, 9}

    embedded = segmenter.prefetch(segmenter.plane(0, 6), radius=2)  # 7 is kept, 8 goes
    assert [p.index for p in embedded] == [6, 5]
    assert {k.index for k in segmenter.cache.keys()} == {5, 6, 7}

    tiny = Segmenter(predictor, slices_volume(10), cache=EmbeddingCache(max_bytes=FAKE_BYTES))
    assert [p.index for p in tiny.prefetch(tiny.plane(0, 3), radius=2)] == [3]
    assert [k.index for k in tiny.cache.keys()] == [3]


def test_prefetch_with_a_real_model_keeps_the_shown_slice(monkeypatch, sam2_tiny):
    calls = count_embeds(monkeypatch, sam2_tiny)
    volume = structured_volume()
    segmenter = Segmenter(sam2_tiny, volume)
    (shown,) = segmenter.prefetch(segmenter.plane(0, 2), radius=0)
    size = segmenter.cache.entry_nbytes(segmenter.key(shown))
    segmenter.cache.max_bytes = 2 * size  # room for two slices
    embedded = segmenter.prefetch(segmenter.plane(0, 2), radius=2)
    assert [p.index for p in embedded] == [3] and len(calls) == 2
    assert segmenter.is_embedded(segmenter.plane(0, 2)) and segmenter.cache.nbytes <= 2 * size
    prediction = segmenter.predict(segmenter.plane(0, 2), points=[(28, 24)], labels=[1])
    assert len(calls) == 2 and prediction.mask.shape == (48, 56)


# ----------------------------------------------------------------------------- disk cache
def test_disk_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    features = {
        "image": torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last),
        "input_size": (1024, 768),
        "interm": [torch.randn(1, 3, 5), torch.randn(3, 2).to(torch.bfloat16)],
        "half": torch.randn(7).half(),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "nested": {"ints": torch.arange(6, dtype=torch.int32).reshape(2, 3), "none": None},
    }
    original = Embedding(features, (700, 900), "some_model")
    disk = DiskEmbeddingCache(tmp_path / "cache.zarr")
    key = DiskEmbeddingCache.key(np.zeros((7, 9, 3), np.uint8), "some_model")
    assert key not in disk and disk.get(key) is None
    disk.put(key, original)
    assert key in disk and len(disk) == 1

    loaded = DiskEmbeddingCache(tmp_path / "cache.zarr").get(key, device="cpu")  # a new session
    assert loaded.image_size == (700, 900) and loaded.model_name == "some_model"
    got = loaded.features
    assert got["input_size"] == (1024, 768) and isinstance(got["input_size"], tuple)
    assert isinstance(got["interm"], list) and got["nested"]["none"] is None
    pairs = [
        (got["image"], features["image"]), (got["half"], features["half"]), (got["scalar"], features["scalar"]),
        (got["interm"][0], features["interm"][0]), (got["interm"][1], features["interm"][1]),
        (got["nested"]["ints"], features["nested"]["ints"]),
    ]  # fmt: skip
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and a.device.type == "cpu"
        assert torch.equal(bits(a), bits(b))
    assert loaded.nbytes == original.nbytes

    # the key is the content and the model: any change gives another one
    other_pixels = np.zeros((7, 9, 3), np.uint8)
    other_pixels[3, 4, 1] = 1
    assert DiskEmbeddingCache.key(other_pixels, "some_model") != key
    assert DiskEmbeddingCache.key(np.zeros((7, 9, 3), np.uint8), "other_model") != key
    assert DiskEmbeddingCache.key(np.zeros((9, 7, 3), np.uint8), "some_model") != key
    disk.clear()
    assert len(disk) == 0 and key not in disk


def test_half_written_entries_are_ignored(tmp_path):
    disk = DiskEmbeddingCache(tmp_path / "cache.zarr")
    key = "0" * 40
    disk._root.create_group(key)  # a crashed session's group: no "complete" attribute
    assert key not in disk and disk.get(key) is None and len(disk) == 0
    disk.put(key, fake())
    assert disk.get(key) is not None


def test_disk_cache_across_sessions(monkeypatch, tmp_path, sam2_tiny):
    volume = structured_volume()
    plane = SlicePlane.of(volume.shape, 0, 3)
    prompts = dict(points=[(28, 24), (5, 5)], labels=[1, 0])
    calls = count_embeds(monkeypatch, sam2_tiny)
    path = tmp_path / "embeddings.zarr"
    first_session = Segmenter(sam2_tiny, volume, disk_cache=path)
    fresh = first_session.predict(plane, **prompts)  # the encoder ran: a fresh embedding
    fresh_features = first_session.embed(plane).features
    assert len(calls) == 1 and len(first_session.disk_cache) == 1

    calls.clear()
    second_session = Segmenter(sam2_tiny, volume, disk_cache=DiskEmbeddingCache(path))  # fresh memory cache
    assert len(second_session.cache) == 0
    cached = second_session.predict(plane, **prompts)
    assert len(calls) == 0  # the encoder never ran
    loaded = second_session.embed(plane).features
    assert len(loaded["backbone_fpn"]) == len(fresh_features["backbone_fpn"]) == 3
    for a, b in zip(loaded["backbone_fpn"], fresh_features["backbone_fpn"]):
        assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)
    for name in ("masks", "scores", "logits"):
        assert np.array_equal(getattr(cached, name), getattr(fresh, name))

    windowed = Segmenter(sam2_tiny, volume, window=IntensityWindow(20.0, 220.0), disk_cache=path)
    assert windowed.disk_key(plane) != second_session.disk_key(plane)
    windowed.embed(plane)  # another window: another slice for the model, a miss
    assert len(calls) == 1 and len(windowed.disk_cache) == 2
    retrained = Segmenter(sam2_tiny, volume, disk_cache=path, model_id=f"{sam2_tiny.name}|other weights")
    assert retrained.disk_key(plane) != second_session.disk_key(plane)
    before = second_session.disk_key(plane)
    monkeypatch.setattr(sam2_tiny, "features_format", "another layout")
    assert second_session.disk_key(plane) != before  # embeddings of another layout are never read back


def test_workspace_with_a_disk_cache(monkeypatch, tmp_path, sam2_tiny):
    volume = structured_volume()
    plane = SlicePlane.of(volume.shape, 0, 1)
    first = Workspace(disk_cache=tmp_path / "c.zarr")
    first.segmenter(sam2_tiny, volume, False, CONTRAST_LIMITS, (0, 255)).embed(plane)
    calls = count_embeds(monkeypatch, sam2_tiny)
    workspace = Workspace(disk_cache=tmp_path / "c.zarr")
    workspace.segmenter(sam2_tiny, volume.copy(), False, CONTRAST_LIMITS, (0, 255)).embed(plane)
    assert len(calls) == 0 and len(workspace.cache) == 1


def test_slice_key_names_everything():
    assert SliceKey._fields == (
        "model", "model_token", "image", "window", "rgb", "axis", "index", "row_axis", "col_axis", "region",
    )  # fmt: skip


def test_model_identity_tells_weights_apart(tmp_path):
    from rwth_sam.core.embeddings.workspace import model_identity

    official = model_identity("mobile_sam_vit_t", None)
    assert rwth_sam.get_model_spec("mobile_sam_vit_t").weights.sha256 in official
    checkpoint = tmp_path / "fine_tuned.pt"
    checkpoint.write_bytes(b"weights")
    local = model_identity("mobile_sam_vit_t", checkpoint)
    assert local != official and str(checkpoint.resolve()) in local
    checkpoint.write_bytes(b"other weights")  # replaced by another file
    assert model_identity("mobile_sam_vit_t", checkpoint) != local
