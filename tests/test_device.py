"""Device choice, and the fall back from Apple MPS to the CPU when an operation is missing there."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rwth_sam
from rwth_sam.core.models.device import (
    available_devices,
    default_device,
    leave_a_core_free,
    release_freed_memory,
    resolve_device,
)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
needs_no_mps = pytest.mark.skipif(
    getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    reason="checks the behaviour without Apple MPS",
)


# --------------------------------------------------------------------------- choosing a device


@needs_no_cuda
@needs_no_mps
def test_default_is_the_cpu_here():
    assert available_devices() == ["cpu"]
    assert default_device() == "cpu"
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_preference_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert available_devices() == ["cuda", "mps", "cpu"]
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("mps")
    assert resolve_device("cpu") == torch.device("cpu")


def test_explicit_cpu_in_any_form():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", torch.device("cuda")])
def test_unavailable_cuda_is_an_input_error(name):
    with pytest.raises(rwth_sam.InputError, match="not available here") as info:
        resolve_device(name)
    assert "cpu" in str(info.value)  # says what can be chosen instead


@needs_no_mps
def test_unavailable_mps_is_an_input_error():
    with pytest.raises(rwth_sam.InputError, match="not available here"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "cdua", "", "cuda:x"])
def test_unknown_device_is_an_input_error(name):
    with pytest.raises(rwth_sam.InputError) as info:
        resolve_device(name)
    assert "cpu" in str(info.value)


@needs_no_cuda
def test_load_model_refuses_an_unavailable_device():
    with pytest.raises(rwth_sam.InputError, match="cuda"):
        rwth_sam.load_model("mobile_sam_vit_t", pretrained=False, device="cuda")


# --------------------------------------------------------------------------- MPS fall back


class FlakyPredictor(rwth_sam.Predictor):
    """Fails the first ``failures`` calls of each operation the way an op missing on MPS does."""

    def __init__(self, device: torch.device, error: Exception | None = None, failures: int = 1):
        super().__init__(torch.nn.Linear(2, 2), "flaky", device)
        self.error = error if error is not None else NotImplementedError("aten::upsample_bicubic2d not on MPS")
        self.failures = failures
        self.calls = []

    @property
    def input_size(self) -> int:
        return 16

    def _fail_or(self, result):
        self.calls.append(self.device)
        if len(self.calls) <= self.failures:
            raise self.error
        return result

    def _embed(self, rgb):
        return self._fail_or(rwth_sam.Embedding({"seen": rgb.shape}, rgb.shape[:2], self.name))

    def _predict(self, embedding, prompts, multimask, all_masks):
        masks = np.zeros((1,) + embedding.image_size, bool)
        return self._fail_or(rwth_sam.Prediction(masks, np.array([0.5], np.float32), np.zeros((1, 4, 4), np.float32)))


RGB = np.zeros((8, 8, 3), np.uint8)


def mps_predictor(**kwargs) -> FlakyPredictor:
    predictor = FlakyPredictor(torch.device("mps"), **kwargs)
    # the model would sit on MPS; record where the fall back moves it without needing MPS here
    moves = []
    original_to = predictor.model.to
    predictor.model.to = lambda device: (moves.append(torch.device(device)), original_to("cpu"))[1]
    predictor.moves = moves
    return predictor


@pytest.mark.parametrize("error", [NotImplementedError("op missing"), RuntimeError("MPS backend out of ops")])
def test_embed_falls_back_from_mps_to_cpu(error):
    predictor = mps_predictor(error=error)
    with pytest.warns(RuntimeWarning, match="not supported on Apple MPS") as record:
        embedding = predictor.embed(RGB)
    assert str(error) in str(record[0].message)
    assert predictor.device == torch.device("cpu")
    assert predictor.moves == [torch.device("cpu")]
    assert predictor.calls == [torch.device("mps"), torch.device("cpu")]
    assert embedding.features == {"seen": (8, 8, 3)}  # the second attempt's result
    assert embedding.image_size == (8, 8)

    # later calls run on the CPU straight away, without another warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.embed(RGB)
    assert predictor.calls[-1] == torch.device("cpu") and len(predictor.calls) == 3


def test_predict_falls_back_from_mps_to_cpu():
    predictor = mps_predictor(failures=1)
    embedding = rwth_sam.Embedding({"image_embed": None}, (8, 8), "flaky")
    prompts = rwth_sam.Prompts.make(points=[(3, 4)])
    with pytest.warns(RuntimeWarning, match="running this model on the CPU"):
        prediction = predictor.predict(embedding, prompts)
    assert predictor.device == torch.device("cpu")
    assert prediction.masks.shape == (1, 8, 8)
    assert predictor.calls == [torch.device("mps"), torch.device("cpu")]


def test_a_second_failure_after_the_fall_back_is_raised():
    predictor = mps_predictor(failures=2, error=NotImplementedError("still broken"))
    with pytest.warns(RuntimeWarning), pytest.raises(NotImplementedError, match="still broken"):
        predictor.embed(RGB)
    assert predictor.device == torch.device("cpu")


@pytest.mark.parametrize("error", [NotImplementedError("op missing"), RuntimeError("CUDA out of memory")])
def test_errors_on_other_devices_are_raised(error):
    predictor = FlakyPredictor(torch.device("cpu"), error=error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall back warning either
        with pytest.raises(type(error), match=str(error)):
            predictor.embed(RGB)
    assert predictor.device == torch.device("cpu")
    assert predictor.calls == [torch.device("cpu")]


def test_other_exception_types_are_not_swallowed_on_mps():
    predictor = mps_predictor(error=ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        predictor.embed(RGB)
    assert predictor.device == torch.device("mps")
    assert predictor.moves == []


def test_embed_checks_its_input_before_running():
    predictor = FlakyPredictor(torch.device("cpu"), failures=0)
    with pytest.raises(rwth_sam.InputError, match="uint8 RGB"):
        predictor.embed(np.zeros((8, 8), np.uint8))
    with pytest.raises(rwth_sam.InputError, match="uint8 RGB"):
        predictor.embed(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(rwth_sam.InputError, match="too small"):
        predictor.embed(np.zeros((1, 8, 3), np.uint8))
    assert predictor.calls == []


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_model_leaves_one_core_to_the_gui(four_cores):
    torch.set_num_threads(4)
    assert leave_a_core_free() == 3 == torch.get_num_threads()


def test_a_thread_count_the_user_chose_is_kept(four_cores):
    torch.set_num_threads(2)
    assert leave_a_core_free() == 2 == torch.get_num_threads()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_a_worker_thread_freed_goes_back_to_the_system():
    """What a thread frees stays in its glibc arena (resident) until trimmed: after a 3D run, 0.5 GB."""

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def work():
        blocks = [np.ones(10_000) for _ in range(20_000)]  # 80 kB each, below glibc's mmap threshold
        del blocks

    before = resident_mb()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    kept = resident_mb() - before
    assert release_freed_memory()
    assert resident_mb() - before < kept / 2, f"{kept:.0f} MB stayed resident after the thread freed them"
