"""Shared fixtures: small random-weight models (seeded, built once per session) and real data."""

from __future__ import annotations

import codecs
import hashlib
import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import rwth_sam  # imports torch before napari creates its GL context (see rwth_sam._triton_guard)
from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.labels.profiles import PROFILE_FORMAT, Profile, SegmentationClass
from rwth_sam.core.models.builtin import sam2_spec
from rwth_sam.core.models.predictors.base import Embedding, Prediction, Predictor
from rwth_sam.core.upstream.sam2 import fit_feature_sizes

# With one thread, torch upsamples 3 channels with another kernel than 1 channel (ulp differences),
# so upstream (3 candidates) and rwth-sam (the best one) could differ where a logit is within an ulp
# of 0. Two threads use one kernel for both, which is what the equality tests compare.
if torch.get_num_threads() == 1:
    torch.set_num_threads(2)

SHARED_DATA = Path(os.environ.get("RWTH_SAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# SAM 2.1 tiny at 256 pixels: the real architecture, cheap enough for every test run.
SAM2_TINY_256 = "sam2.1_hiera_tiny_256"
rwth_sam.register_model(
    sam2_spec(
        SAM2_TINY_256, "SAM 2.1 Hiera-T (256 px, tests)", "configs/sam2.1/sam2.1_hiera_t.yaml", None, image_size=256
    ),
    replace=True,
)

SMALL_MODELS = ["mobile_sam_vit_t", "sam_hq_vit_tiny", SAM2_TINY_256]
LARGE_MODELS = [
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",
    "sam_hq_vit_b",
    "sam_hq_vit_l",
    "sam_hq_vit_h",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
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


def pytest_sessionfinish(session, exitstatus):
    """Let model work still running in the background end before the interpreter does.

    A test may end while a worker still embeds ahead or a cancelled run finishes its slice; a thread
    running torch while Python shuts down crashed the process (exit 139) after every test passed."""
    if "qtpy" in sys.modules:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(60_000)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith("rwth-sam"):
            thread.join(60)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m real_data` picks these tests
def pytest_collection_modifyitems(config, items):
    """Tests that use the real data are marked ``real_data``, and skip before any fixture is set up
    when it is absent.

    Skipping inside the ``shared_data`` fixture came too late for GUI tests: napari's viewer fixture,
    set up first, then errored at teardown ("no attribute 'rep_call'"), so a user's clone failed.
    """
    skip = pytest.mark.skip(
        reason=f"real data not found at {SHARED_DATA} (../shared/data is absent in a user's checkout)"
    )
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


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(mobile_sam, tmp_path_factory):
    """The seeded random MobileSAM (the ``mobile_sam`` fixture), saved as a checkpoint file."""
    path = tmp_path_factory.mktemp("weights") / "mobile_sam_random.pt"
    torch.save(mobile_sam.model.state_dict(), path)
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
        fit_feature_sizes(predictor)
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


# ----------------------------------------------------------------------------- profiles
# Shared by test_profiles.py (the core and the reader) and test_profile_widget.py (the widget, File > Open).
MAX_CLASSES = 5_000  # the documented limits (profiles/README.md)
MAX_PROFILE_BYTES = 4 * 2**20


def example_profile() -> Profile:
    return Profile(
        "Cell",
        (
            SegmentationClass("casing", 1, "#9E9E9E", "steel can"),
            SegmentationClass("anode", 3, "#1f77b4"),
            SegmentationClass("cathode", 2, "#d62728"),
        ),
        description="test profile",
    )


def example_profile_dict() -> dict:
    return example_profile().to_dict()


def example_with_class(**fields) -> dict:
    """The example profile's JSON data, its second class's fields changed."""
    data = example_profile_dict()
    data["classes"][1].update(fields)
    return data


def example_profile_text() -> str:
    return json.dumps(example_profile_dict(), ensure_ascii=False)


def many_classes(count: int, description: str = "") -> tuple[SegmentationClass, ...]:
    return tuple(
        SegmentationClass(f"class {value}", value, f"#{value * 2654435761 % 2**24:06x}", description)
        for value in range(1, count + 1)
    )


@pytest.fixture
def profile_store():
    """The session's profile store, holding the example profiles only, before and after the test."""
    PROFILES.reset()
    yield PROFILES
    PROFILES.reset()


@pytest.fixture
def notifications():
    """The notifications napari shows while the test runs (napari.utils only: no Qt needed)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def messages(notifications, severity) -> list[str]:
    """The texts of the notifications of one ``NotificationSeverity``."""
    return [str(note.message) for note in notifications if note.severity == severity]


# The catalogue of bad profile files (issue 9). Each case: its name, the file's content, whether is_profile_file
# claims it, and the problem Profile.load names after "Cannot load profile <path>: ". The content is bytes; an int:
# a sparse file of that size starting like a profile (the 64 MB file of issue 9); or DIRECTORY / MISSING.
DIRECTORY, MISSING = "a directory", "no file"
PROFILE_HEAD = b'{"format": "rwth-sam-profile", "version": 1, "name": "huge", "classes": ['


def _json_bytes(data) -> bytes:
    return json.dumps(data).encode("utf-8")


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _too_many_classes() -> bytes:
    """5001 classes in 300 kB (compact JSON): under the size limit, over the class limit."""
    classes = [{"name": f"c{value}", "value": value, "color": "#000000"} for value in range(1, MAX_CLASSES + 2)]
    return _json_bytes({"format": PROFILE_FORMAT, "version": 1, "name": "many", "classes": classes})


CATALOGUE = [
    ("broken JSON", b'{"format": "rwth-sam-profile", "version": 1, "name": "x",}', True, "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 58"),
    ("JSON array at top level", b"[1, 2, 3]", False, "a profile must be a JSON object, not a list"),
    ("JSON string at top level", b'"rwth-sam-profile"', False, "a profile must be a JSON object, not a string"),
    ("another JSON file", _json_bytes({"images": [], "annotations": []}), False, "format: not an rwth-sam profile: 'format' is missing, expected \"rwth-sam-profile\""),
    ("another format", _json_bytes({**example_profile_dict(), "format": "coco"}), False, "format: not an rwth-sam profile: 'format' is 'coco', expected \"rwth-sam-profile\""),
    ("newer version", _json_bytes({**example_profile_dict(), "version": 2}), True, "version: profile format version 2 is not supported; this rwth-sam reads version 1 (made by a newer rwth-sam: update rwth-sam to open it)"),
    ("name of a wrong type", _json_bytes({**example_profile_dict(), "name": 3}), True, "name: must be a string, not a number"),
    ("classes not a list", _json_bytes({**example_profile_dict(), "classes": "casing"}), True, "classes: must be a list of classes, not a string"),
    ("missing key", _json_bytes({**example_profile_dict(), "classes": [{"name": "a", "value": 1}]}), True, "classes[0].color: is missing"),
    ("misspelt key", _json_bytes(example_with_class(colour="#ffffff")), True, "classes[1]: unknown key 'colour' (allowed: name, value, color, description)"),
    ("key given twice", b'{"format": "rwth-sam-profile", "version": 1, "name": "a", "name": "b"}', True, "the key 'name' is given twice in one object; each key may appear once"),
    ("duplicate class names", _json_bytes(example_with_class(name="CASING")), True, "classes[1].name: 'CASING' is already the name of classes[0]; class names must be unique"),
    ("duplicate label values", _json_bytes(example_with_class(value=1)), True, "classes[1].value: 1 is already the label value of classes[0] ('casing'); label values must be unique"),
    ("background as a class", _json_bytes(example_with_class(name="Background")), True, "classes[1].name: 'Background' is reserved for label value 0 (unlabelled pixels)"),
    ("label value 0", _json_bytes(example_with_class(value=0)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 0"),
    ("negative label value", _json_bytes(example_with_class(value=-7)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not -7"),
    ("label value 2**31", _json_bytes(example_with_class(value=2**31)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 2147483648"),
    ("label value of 5000 digits", _json_bytes(example_profile_dict())[:-3] + b", \"value\": " + b"9" * 5000 + b"}]}", True, "a number of 5000 digits is too long for a label value"),
    ("float label value", _json_bytes(example_with_class(value=2.0)), True, "classes[1].value: must be a whole number from 1 to 2147483647, not 2.0"),
    ("NaN label value", _json_bytes(example_with_class(value=float("nan"))), True, "classes[1].value: must be a whole number from 1 to 2147483647, not nan"),
    ("boolean label value", _json_bytes(example_with_class(value=True)), True, "classes[1].value: must be a whole number from 1 to 2147483647, not True"),
    ("label value as a string", _json_bytes(example_with_class(value="3")), True, "classes[1].value: must be a whole number from 1 to 2147483647, not '3'"),
    ("nested label value", _json_bytes(example_with_class(value=_nested(50))), True, "classes[1].value: must be a whole number from 1 to 2147483647, not [[[[...]]]]"),
    ("named colour", _json_bytes(example_with_class(color="red")), True, "classes[1].color: 'red' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("short colour", _json_bytes(example_with_class(color="#fff")), True, "classes[1].color: '#fff' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("colour of a megabyte", _json_bytes(example_with_class(color="#" + "f" * 2**20)), True, "classes[1].color: '#" + "f" * 26 + "..." + "f" * 28 + "' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("lone surrogate in a name", example_profile_text().replace('"anode"', '"an\\ud800ode"').encode(), True, "classes[1].name: holds '\\ud800', half of a surrogate pair, which is no character"),
    ("too many classes", _too_many_classes(), True, "classes: 5001 classes are too many: a profile may hold at most 5000"),
    ("a 64 MiB profile", 64 * 2**20, True, "the file is 67108864 bytes (64.0 MiB); a profile file may be at most 4194304 bytes (4 MiB)"),
    ("one byte too large", PROFILE_HEAD + b" " * (MAX_PROFILE_BYTES - len(PROFILE_HEAD) - 1) + b"]}", True, "the file is 4194305 bytes (4.0 MiB); a profile file may be at most 4194304 bytes (4 MiB)"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, False, "not valid JSON for a profile: it is nested too deeply"),
    ("deep nesting in a profile", PROFILE_HEAD + b"[" * 100_000 + b"]" * 100_000 + b"]}", True, "not valid JSON for a profile: it is nested too deeply"),
    ("UTF-16 with a byte order mark", example_profile_text().encode("utf-16"), False, "it is not a UTF-8 text file: it starts with a UTF-16 byte order mark (save it as UTF-8)"),
    ("UTF-16 without a byte order mark", example_profile_text().encode("utf-16-le"), False, "it is not a UTF-8 text file: it holds NUL bytes (a binary file, or UTF-16 text)"),
    ("latin-1 bytes", example_profile_text().replace("steel can", "Stahlbecher Ü").encode("latin-1"), True, "it is not a UTF-8 text file: byte 0xdc at position 183 is not UTF-8 (save it as UTF-8)"),
    ("binary garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", False, "it is not a UTF-8 text file: byte 0x89 at position 0 is not UTF-8 (save it as UTF-8)"),
    ("empty file", b"", False, "the file is empty"),
    ("only a byte order mark and spaces", codecs.BOM_UTF8 + b" \n\t ", False, "the file is empty"),
    ("a directory", DIRECTORY, False, "Is a directory"),
    ("a nonexistent path", MISSING, False, "No such file or directory"),
]  # fmt: skip


def write_case(folder: Path, content) -> Path:
    """A catalogue case's file (or folder, or nothing) at ``folder/case.json``."""
    path = folder / "case.json"
    if content == DIRECTORY:
        path.mkdir()
    elif isinstance(content, int):
        with path.open("wb") as file:
            file.write(PROFILE_HEAD)
            file.truncate(content)  # sparse: the test writes 70 bytes, not 64 MiB
    elif content != MISSING:
        path.write_bytes(content)
    return path


# ----------------------------------------------------------------------------- volume files the tests write
def write_dicom_series(
    folder: Path,
    hounsfield: np.ndarray,
    spacing=(0.7, 0.8, 2.5),
    origin=(-120.0, -90.0, 40.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    slope: float = 1.0,
    intercept: float = 0.0,
    compression: str | None = None,
    description: str = "CT test series",
    series_uid: str | None = None,
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """A CT series, one file per slice, as a scanner writes it: ``hounsfield`` (numpy order (z, y, x),
    physical values, int16; GDCM stores (value - intercept) / slope, so they should be exact multiples) on
    the grid ``spacing``/``origin``/``direction`` (ITK order, LPS), with ImagePositionPatient per slice.
    ``compression``: None (uncompressed), or a GDCM compressor ("JPEG2000", "JPEG": lossless); ``window``:
    the WindowCenter/WindowWidth a scanner records."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(np.asarray(hounsfield).astype(np.int16))
    volume.SetSpacing(tuple(float(s) for s in spacing))
    volume.SetOrigin(tuple(float(o) for o in origin))
    volume.SetDirection(tuple(float(d) for d in direction))
    series_uid = series_uid or f"1.2.826.0.1.3680043.8.498.{abs(hash((folder.name, description))) % 10**12}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # the series UID below, not GDCM's
    if compression:
        writer.SetUseCompression(True)
        writer.SetCompressor(compression)
    row_col = direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]
    files = []
    for index in range(volume.GetDepth()):
        image = volume[:, :, index]
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0020|000d": series_uid.rsplit(".", 1)[0] + ".1",
            "0020|000e": series_uid,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, index))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in row_col),
            "0028|1053": f"{slope:g}",
            "0028|1052": f"{intercept:g}",
            "0008|0018": f"{series_uid}.{index + 1}",
        }
        if window is not None:
            tags["0028|1050"], tags["0028|1051"] = (f"{value:g}" for value in window)
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"slice{index:04d}.dcm"
        writer.SetFileName(os.fspath(path))
        writer.Execute(image)
        files.append(path)
    return files


class CountingVolume:
    """A volume too large to read whole, as the widget meets it: ``array``'s shape and dtype, every
    key read recorded (and delegated), and reading it whole an error."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)
        self.keys: list = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was read")

    def slices_read(self) -> set[int]:
        """The indices along axis 0 of every slice a recorded key touched (then forgets the keys)."""
        read = set()
        for key in self.keys:
            first = (key if isinstance(key, tuple) else (key,))[0]
            if isinstance(first, slice):
                read.update(range(*first.indices(self.shape[0])))
            elif first is Ellipsis:
                read.update(range(self.shape[0]))
            else:
                read.add(int(first))
        self.keys.clear()
        return read


X_TOOLS = ("Xvfb", "xdotool", "xwd", "convert")


@pytest.fixture
def x_server():
    """Start fresh Xvfb servers of our own (24-bit, of the size asked for), on display numbers that are free;
    each call returns its $DISPLAY. All stop after the test.

    ``-noreset``: by default Xvfb resets whenever its last client disconnects, and a screenshot taken
    during that reset fails ("unable to open display"), as each one did while napari was still starting."""
    import shutil

    from pyvirtualdisplay import Display

    missing = [tool for tool in X_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/setup.sh, which installs them")
    servers = []

    def start(size: tuple[int, int]) -> str:
        server = Display(visible=False, size=size, color_depth=24, extra_args=["-nolisten", "tcp", "-noreset"])
        server.start()
        servers.append(server)
        return server.new_display_var

    yield start
    for server in servers:
        server.stop()
