"""Checkpoint download, verification, caching and local loading, against a loopback HTTP server.

The server only listens on 127.0.0.1 and serves a checkpoint this module writes itself: the state
dict of a seeded random MobileSAM (the smallest real model, ~40 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

import rwth_sam
from rwth_sam.core.models import weights as weights_module
from rwth_sam.core.models.loading import load_weights
from rwth_sam.core.models.weights import Weights, cache_dir, cached_path, fetch, is_cached, load_state_dict

BASE_MODEL = "mobile_sam_vit_t"
TEST_MODEL = "test_loopback_mobile_sam"
FILENAME = "loopback_mobile_sam.pt"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mobile_checkpoint(mobile_sam_checkpoint):
    """conftest's MobileSAM checkpoint: its path, bytes, sha256 and state dict."""
    data = mobile_sam_checkpoint.read_bytes()
    return {
        "path": mobile_sam_checkpoint,
        "data": data,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "state": torch.load(mobile_sam_checkpoint, weights_only=True),
        "module": rwth_sam.get_model_spec(BASE_MODEL).build(),  # random weights, to load checkpoints into
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the checkpoint whole (/ckpt.pt), cut short with a lying Content-Length (/cut.pt),
    or half of it with an honest Content-Length (/half.pt)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        data = server.payload
        if self.path == "/ckpt.pt":
            body, length = data, len(data)
        elif self.path == "/cut.pt":
            body, length = data[: len(data) // 2], len(data)
        elif self.path == "/half.pt":
            body, length = data[: len(data) // 2], len(data) // 2
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, format, *args):  # keep the test output clean
        pass


class LoopbackServer:
    def __init__(self, payload: bytes):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.payload = payload
        self.httpd.requests = []
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)


@pytest.fixture
def server(mobile_checkpoint, monkeypatch):
    # requests honours proxy variables: make sure loopback traffic never goes to a proxy.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = LoopbackServer(mobile_checkpoint["data"])
    yield srv
    srv.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(weights_module.CACHE_ENV_VAR, str(path))
    return path


@pytest.fixture
def register():
    """Register a MobileSAM entry whose official weights are the given ones; unregistered after."""
    base = rwth_sam.get_model_spec(BASE_MODEL)

    def _register(weights: Weights | None) -> str:
        rwth_sam.register_model(dataclasses.replace(base, name=TEST_MODEL, weights=weights), replace=True)
        return TEST_MODEL

    yield _register
    rwth_sam.unregister_model(TEST_MODEL)


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/ckpt.pt"


def make_weights(mobile_checkpoint, url: str, sha256: str | None = None) -> Weights:
    return Weights(url, sha256 or mobile_checkpoint["sha256"], mobile_checkpoint["size"], FILENAME)


def cache_contents(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*")) if cache.exists() else []


def assert_weights_equal(predictor: rwth_sam.Predictor, state: dict) -> None:
    loaded = predictor.model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value), key


# --------------------------------------------------------------------------- cache folder


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_module.CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    weights = Weights("https://example.invalid/w.pt", "0" * 64, 10, "w.pt")
    assert cached_path(weights) == tmp_path / "elsewhere" / "w.pt"

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(weights_module.CACHE_ENV_VAR, "~/sam-weights")
    assert cache_dir() == tmp_path / "sam-weights"

    monkeypatch.delenv(weights_module.CACHE_ENV_VAR)
    default = cache_dir()
    assert default.name == "weights" and "rwth-sam" in default.parts
    assert not str(default).startswith(str(tmp_path / "elsewhere"))


def test_is_cached_needs_the_file_with_the_right_size(cache):
    weights = Weights("https://example.invalid/w.pt", "0" * 64, 10, "w.pt")
    assert not is_cached(weights)
    cache.mkdir()
    (cache / "w.pt").write_bytes(b"12345")
    assert not is_cached(weights)  # a partial file is not a cached checkpoint
    (cache / "w.pt").write_bytes(b"0123456789")
    assert is_cached(weights)
    assert fetch(weights) == cache / "w.pt"  # no download attempted (the URL cannot resolve)


def test_format_bytes():
    assert weights_module.format_bytes(512) == "512 B"
    assert weights_module.format_bytes(40728226) == "38.8 MB"
    assert weights_module.format_bytes(2564550879) == "2.4 GB"


# --------------------------------------------------------------------------- downloads


class FakeProgress:
    """What pooch needs of a tqdm-like progress bar (napari's ``progress`` is one)."""

    def __init__(self):
        self.total = None
        self.n = 0
        self.updates = []
        self.resets = 0
        self.closed = False

    def update(self, n):
        self.updates.append(n)
        self.n += n

    def reset(self):
        self.resets += 1
        self.n = 0

    def close(self):
        self.closed = True


def test_download_verifies_caches_and_then_works_offline(mobile_checkpoint, server, cache, register):
    weights = make_weights(mobile_checkpoint, server.url("ckpt.pt"))
    name = register(weights)
    assert not is_cached(weights)
    progress = FakeProgress()

    predictor = rwth_sam.load_model(name, device="cpu", progressbar=progress)

    assert server.requests == ["/ckpt.pt"]
    # the tqdm-like progress bar got the byte total, streamed updates, and was filled and closed
    assert progress.total == mobile_checkpoint["size"]
    assert len(progress.updates) > 1
    assert progress.n == mobile_checkpoint["size"]
    assert progress.closed
    assert cache_contents(cache) == [FILENAME]  # no temporary files left next to it
    cached = cache / FILENAME
    assert cached.read_bytes() == mobile_checkpoint["data"]
    assert is_cached(weights)
    assert predictor.name == name
    assert_weights_equal(predictor, mobile_checkpoint["state"])

    server.stop()
    torch.manual_seed(999)  # a different random init: only loading from the cache gives equal weights
    offline = rwth_sam.load_model(name, device="cpu", progressbar=False)
    assert_weights_equal(offline, mobile_checkpoint["state"])
    assert server.requests == ["/ckpt.pt"]


def test_wrong_checksum_is_refused_and_not_kept(mobile_checkpoint, server, cache, register):
    wrong = hashlib.sha256(b"something else").hexdigest()
    name = register(make_weights(mobile_checkpoint, server.url("ckpt.pt"), sha256=wrong))
    with pytest.raises(rwth_sam.WeightsError, match="corrupt or incomplete") as info:
        rwth_sam.load_model(name, device="cpu", progressbar=False)
    message = str(info.value)
    assert FILENAME in message and server.url("ckpt.pt") in message and "not kept" in message
    assert server.requests == ["/ckpt.pt"]
    assert cache_contents(cache) == []


def test_connection_cut_short_is_refused_and_not_kept(mobile_checkpoint, server, cache):
    weights = make_weights(mobile_checkpoint, server.url("cut.pt"))
    with pytest.raises(rwth_sam.WeightsError, match="Could not download") as info:
        fetch(weights, progressbar=False)
    assert server.url("cut.pt") in str(info.value)
    assert server.requests == ["/cut.pt"]
    assert cache_contents(cache) == []
    assert not is_cached(weights)


def test_half_a_file_is_refused_and_not_kept(mobile_checkpoint, server, cache, register):
    name = register(make_weights(mobile_checkpoint, server.url("half.pt")))
    with pytest.raises(rwth_sam.WeightsError, match="corrupt or incomplete"):
        rwth_sam.load_model(name, device="cpu", progressbar=False)
    assert server.requests == ["/half.pt"]
    assert cache_contents(cache) == []


def test_http_error_is_a_weights_error(mobile_checkpoint, server, cache):
    weights = make_weights(mobile_checkpoint, server.url("missing.pt"))
    with pytest.raises(rwth_sam.WeightsError, match="404") as info:
        fetch(weights, progressbar=False)
    assert server.url("missing.pt") in str(info.value)
    assert cache_contents(cache) == []


def test_server_down_names_the_url(mobile_checkpoint, cache, register, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    url = closed_port_url()
    name = register(make_weights(mobile_checkpoint, url))
    with pytest.raises(rwth_sam.WeightsError) as info:
        rwth_sam.load_model(name, device="cpu", progressbar=False)
    message = str(info.value)
    assert url in message
    assert str(cache / FILENAME) in message  # tells where to put the file by hand
    assert cache_contents(cache) == []


def test_a_stale_partial_file_in_the_cache_is_replaced(mobile_checkpoint, server, cache):
    weights = make_weights(mobile_checkpoint, server.url("ckpt.pt"))
    cache.mkdir()
    (cache / FILENAME).write_bytes(mobile_checkpoint["data"][:1000])
    assert not is_cached(weights)
    path = fetch(weights, progressbar=False)
    assert path == cache / FILENAME
    assert path.read_bytes() == mobile_checkpoint["data"]
    assert cache_contents(cache) == [FILENAME]


# --------------------------------------------------------------------------- local checkpoints


def test_local_checkpoint_needs_no_download(mobile_checkpoint, cache, register):
    name = register(make_weights(mobile_checkpoint, closed_port_url()))
    torch.manual_seed(4321)
    predictor = rwth_sam.load_model(name, checkpoint=mobile_checkpoint["path"], device="cpu")
    assert_weights_equal(predictor, mobile_checkpoint["state"])
    assert cache_contents(cache) == []


def test_model_without_official_weights_needs_a_local_file(mobile_checkpoint, cache, register):
    name = register(None)
    with pytest.raises(rwth_sam.WeightsError, match="no official download"):
        rwth_sam.load_model(name, device="cpu")
    assert cache_contents(cache) == []


def test_truncated_local_checkpoint(mobile_checkpoint, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(mobile_checkpoint["data"][: len(mobile_checkpoint["data"]) // 2])
    with pytest.raises(rwth_sam.WeightsError, match="truncated, corrupt") as info:
        load_weights(mobile_checkpoint["module"], rwth_sam.get_model_spec(BASE_MODEL), path)
    assert str(path) in str(info.value)


def test_garbage_and_missing_local_checkpoints(tmp_path):
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(rwth_sam.WeightsError, match="truncated, corrupt"):
        load_state_dict(garbage)
    with pytest.raises(rwth_sam.WeightsError, match="not found"):
        load_state_dict(tmp_path / "absent.pt")
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(rwth_sam.WeightsError, match="no model weights"):
        load_state_dict(empty)


def test_checkpoint_of_another_model_does_not_fit(mobile_checkpoint):
    # SAM-HQ ViT-Tiny shares MobileSAM's encoder but has extra HQ decoder weights: they are missing.
    with pytest.raises(rwth_sam.WeightsError, match="does not fit") as info:
        rwth_sam.load_model("sam_hq_vit_tiny", checkpoint=mobile_checkpoint["path"], device="cpu")
    assert "SAM-HQ ViT-Tiny" in str(info.value)


def test_checkpoint_with_wrong_shapes_does_not_fit(mobile_checkpoint, tmp_path):
    key, value = next((k, v) for k, v in mobile_checkpoint["state"].items() if v.ndim >= 2)
    path = tmp_path / "wrong_shape.pt"
    torch.save({key: torch.zeros(value.shape[0] + 1, *value.shape[1:])}, path)
    with pytest.raises(rwth_sam.WeightsError, match="does not fit MobileSAM ViT-T"):
        load_weights(mobile_checkpoint["module"], rwth_sam.get_model_spec(BASE_MODEL), path)


def test_checkpoint_with_extra_weights_does_not_fit_a_strict_model(mobile_checkpoint, tmp_path):
    path = tmp_path / "extra.pt"
    torch.save({**mobile_checkpoint["state"], "extra.head.weight": torch.zeros(2)}, path)
    with pytest.raises(rwth_sam.WeightsError, match="does not fit MobileSAM ViT-T: 0 missing and 1 unexpected"):
        load_weights(mobile_checkpoint["module"], rwth_sam.get_model_spec(BASE_MODEL), path)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrapper):
    inner = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.ones(2)}
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: inner, "epoch": 3}, path)
    state = load_state_dict(path)
    assert set(state) == set(inner)
    assert torch.equal(state["layer.weight"], inner["layer.weight"])
