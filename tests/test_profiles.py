"""Segmentation profiles in the core: JSON round trip, validation messages, example profiles, and the
catalogue of bad profile files, each read as File > Open reads it (no Qt)."""

from __future__ import annotations

import codecs
import json
import time
from pathlib import Path

import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from rwth_sam.core import phantom
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels import profiles
from rwth_sam.core.labels.profiles import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    Profile,
    ProfileError,
    SegmentationClass,
    builtin_profiles,
    builtin_profiles_dir,
    is_profile_file,
)
from rwth_sam.ui import reader
from rwth_sam.ui.profile_store import PROFILES

ROOT = Path(__file__).resolve().parents[1]
TOTALSEG_LABELS = ROOT.parent / "shared" / "data" / "medct_totalseg_wholebody" / "totalsegmentator_total_labels.json"


def example() -> Profile:
    return Profile(
        "Cell",
        (
            SegmentationClass("casing", 1, "#9E9E9E", "steel can"),
            SegmentationClass("anode", 3, "#1f77b4"),
            SegmentationClass("cathode", 2, "#d62728"),
        ),
        description="test profile",
    )


def valid_dict() -> dict:
    return example().to_dict()


def test_json_round_trip(tmp_path):
    profile = example()
    assert profile.classes[0].color == "#9e9e9e"  # normalised to lower case
    path = profile.save(tmp_path / "cell.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == PROFILE_FORMAT and data["version"] == PROFILE_VERSION
    assert [item["name"] for item in data["classes"]] == ["casing", "anode", "cathode"]  # order kept
    assert Profile.load(path) == profile
    assert Profile.from_dict(profile.to_dict()) == profile
    assert not list(tmp_path.glob("*.partial"))


def test_unicode_and_optional_fields(tmp_path):
    data = {
        "format": PROFILE_FORMAT,
        "version": 1,
        "name": "Zellen – Ü",
        "classes": [{"name": "Kathode", "value": 7, "color": "#ABCDEF"}],
    }
    path = tmp_path / "u.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    profile = Profile.load(path)
    assert profile.name == "Zellen – Ü" and profile.description == "" and profile.classes[0].description == ""
    assert Profile.load(profile.save(path)) == profile
    assert Profile.from_dict({"format": PROFILE_FORMAT, "version": 1, "name": "empty"}).classes == ()


def test_queries():
    profile = example()
    assert profile.class_by_value(3).name == "anode"
    assert profile.class_by_value(4) is None
    assert profile.class_by_name(" Cathode ").value == 2
    assert profile.class_by_name("pore") is None
    assert profile.next_free_value() == 4
    assert Profile("empty").next_free_value() == 1
    assert Profile("top", (SegmentationClass("a", 2**31 - 1, "#000000"),)).next_free_value() == 1


def test_color_dict_and_features():
    profile = example()
    assert profile.color_dict() == {None: "transparent", 0: "transparent", 1: "#9e9e9e", 3: "#1f77b4", 2: "#d62728"}
    assert profile.color_dict(unknown="#808080")[None] == "#808080"
    assert profile.features() == {"index": [0, 1, 3, 2], "class": ["background", "casing", "anode", "cathode"]}


def test_profile_error_is_an_input_error():
    assert issubclass(ProfileError, InputError) and issubclass(ProfileError, ValueError)


def _with_class(**fields) -> dict:
    data = valid_dict()
    data["classes"][1].update(fields)
    return data


# fmt: off
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a profile must be a JSON object, not a list"),
        ({**valid_dict(), "format": "other"}, "format: not an rwth-sam profile: 'format' is 'other', expected \"rwth-sam-profile\""),
        ({key: value for key, value in valid_dict().items() if key != "format"}, "format: not an rwth-sam profile: 'format' is missing"),
        ({**valid_dict(), "version": "1"}, "version: must be a whole number (this rwth-sam reads version 1), not '1'"),
        ({key: value for key, value in valid_dict().items() if key != "version"}, "version: must be a whole number (this rwth-sam reads version 1), not missing"),
        ({**valid_dict(), "version": 2}, "version: profile format version 2 is not supported; this rwth-sam reads version 1 (made by a newer rwth-sam"),
        ({**valid_dict(), "version": 0}, "version: profile format version 0 is not supported; this rwth-sam reads version 1"),
        ({**valid_dict(), "colour": "x"}, "unknown key 'colour' (allowed: format, version, name, description, classes)"),
        ({key: value for key, value in valid_dict().items() if key != "name"}, "name: is missing"),
        ({**valid_dict(), "name": "  "}, "name: must not be empty"),
        ({**valid_dict(), "name": 3}, "name: must be a string, not a number"),
        ({**valid_dict(), "description": None}, "description: must be a string, not null"),
        ({**valid_dict(), "classes": {"a": 1}}, "classes: must be a list of classes, not an object"),
        ({**valid_dict(), "classes": [1]}, "classes[0]: a class must be an object with name, value, color, description, not a number"),
        (_with_class(colour="#ffffff"), "classes[1]: unknown key 'colour' (allowed: name, value, color, description)"),
        ({**valid_dict(), "classes": [{"name": "a", "value": 1}]}, "classes[0].color: is missing"),
        (_with_class(name=""), "classes[1].name: must not be empty"),
        (_with_class(name=["a"]), "classes[1].name: must be a string, not a list"),
        (_with_class(name="Background"), "classes[1].name: 'Background' is reserved for label value 0"),
        (_with_class(name="CASING"), "classes[1].name: 'CASING' is already the name of classes[0]; class names must be unique"),
        (_with_class(value=0), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 0"),
        (_with_class(value=-4), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not -4"),
        (_with_class(value=2**31), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 2147483648"),
        (_with_class(value=2.5), "classes[1].value: must be a whole number from 1 to 2147483647, not 2.5"),
        (_with_class(value=True), "classes[1].value: must be a whole number from 1 to 2147483647, not True"),
        (_with_class(value="3"), "classes[1].value: must be a whole number from 1 to 2147483647, not '3'"),
        (_with_class(value=1), "classes[1].value: 1 is already the label value of classes[0] ('casing'); label values must be unique"),
        (_with_class(color="red"), "classes[1].color: 'red' is not a colour of the form #rrggbb (e.g. #ff8800)"),
        (_with_class(color="#fff"), "classes[1].color: '#fff' is not a colour of the form #rrggbb"),
        (_with_class(color="#12345g"), "classes[1].color: '#12345g' is not a colour of the form #rrggbb"),
        (_with_class(color=None), "classes[1].color: None is not a colour of the form #rrggbb"),
        (_with_class(description=5), "classes[1].description: must be a string, not a number"),
    ],
)
# fmt: on
def test_validation_errors_name_the_problem_and_its_json_path(data, message):
    with pytest.raises(ProfileError) as caught:
        Profile.from_dict(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_validation_in_python_constructors():
    with pytest.raises(ProfileError, match=r"^color: 'blue' is not a colour"):
        SegmentationClass("a", 1, "blue")
    with pytest.raises(ProfileError, match=r"^classes\[1\]\.value: 1 is already the label value of classes\[0\]"):
        Profile("p", (SegmentationClass("a", 1, "#000000"), SegmentationClass("b", 1, "#000000")))
    with pytest.raises(ProfileError, match=r"^classes\[0\]: must be a SegmentationClass, not dict"):
        Profile("p", ({"name": "a"},))
    with pytest.raises(ProfileError, match=r"^classes: must be a list of classes"):
        Profile("p", "abc")


def test_corrupt_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "rwth-sam-profile",\n  "version": 1,\n  "name": "x",,\n}\n', encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        Profile.load(path)
    message = str(caught.value)
    assert message.startswith(f"Cannot load profile {path}: not valid JSON:")
    assert "at line 4, column 15" in message


def test_wrong_version_file_says_which_version_is_supported(tmp_path):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**valid_dict(), "version": 3}), encoding="utf-8")
    with pytest.raises(
        ProfileError, match=r"version 3 is not supported; this rwth-sam reads version 1 \(made by a newer"
    ):
        Profile.load(path)


def test_invalid_file_message_names_the_file_and_path(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_with_class(color="#12")), encoding="utf-8")
    with pytest.raises(
        ProfileError, match=r"^Cannot load profile .*bad\.json: classes\[1\]\.color: '#12' is not a colour"
    ):
        Profile.load(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ProfileError, match=r"Cannot load profile .*missing\.json: No such file"):
        Profile.load(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="not a UTF-8 text file: it starts with a UTF-16 byte order mark"):
        Profile.load(binary)
    with pytest.raises(ProfileError, match=r"Cannot save the profile to .*: "):
        example().save(tmp_path / "no such folder" / "p.json")


def test_is_profile_file(tmp_path):
    good = example().save(tmp_path / "good.json")
    assert is_profile_file(good) and is_profile_file(str(good))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else", "nested": {"format": PROFILE_FORMAT}}))
    assert not is_profile_file(other)
    plain = tmp_path / "plain.json"
    plain.write_text("[1, 2, 3]")
    assert not is_profile_file(plain)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "rwth-sam-profile", "version": 1,,}')
    assert is_profile_file(broken), "a broken profile is still claimed, so opening it reports the problem"
    renamed = tmp_path / "good.txt"
    renamed.write_text(good.read_text())
    assert not is_profile_file(renamed)
    assert not is_profile_file(tmp_path / "missing.json")
    assert not is_profile_file(tmp_path)
    last = tmp_path / "format_last.json"  # a hand-written profile whose "format" comes after 64 KiB
    data = {"name": "late", "description": "x" * 70_000, "version": 1, "format": PROFILE_FORMAT}
    last.write_text(json.dumps(data))
    assert is_profile_file(last) and Profile.load(last) == Profile("late", description="x" * 70_000)


# ----------------------------------------------------------------- example profiles


def test_example_profiles_ship_and_load():
    assert builtin_profiles_dir() == ROOT / "profiles"
    profiles = {profile.name: profile for profile in builtin_profiles()}
    assert set(profiles) == {"Li-ion cylindrical cell", "Abdominal CT"}
    for path in (ROOT / "profiles").glob("*.json"):
        assert is_profile_file(path)
        assert Profile.load(path).to_dict() == json.loads(path.read_text(encoding="utf-8")), (
            f"{path.name} is not canonical"
        )


def test_battery_profile_matches_the_phantom():
    profile = Profile.load(ROOT / "profiles" / "li_ion_cylindrical_cell.json")
    for value, name in phantom.CLASS_NAMES.items():
        assert profile.class_by_value(value).name == name
    for name in ("jelly roll", "current collector"):
        assert profile.class_by_name(name).value > max(phantom.CLASS_NAMES)


def test_abdominal_profile_uses_totalsegmentator_values():
    profile = Profile.load(ROOT / "profiles" / "abdominal_ct.json")
    for name in ("liver", "spleen", "kidney left", "kidney right", "pancreas", "stomach", "aorta"):
        assert profile.class_by_name(name) is not None, name
    if not TOTALSEG_LABELS.is_file():
        pytest.skip(f"TotalSegmentator label list not found at {TOTALSEG_LABELS}")
    totalseg = {int(value): name for value, name in json.loads(TOTALSEG_LABELS.read_text()).items()}
    for item in profile.classes:
        assert item.description == f"TotalSegmentator: {totalseg[item.value]}", item


def test_profiles_readme_examples(tmp_path, monkeypatch):
    import re

    text = (ROOT / "profiles" / "README.md").read_text(encoding="utf-8")
    example_json = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    profile = Profile.from_dict(json.loads(example_json))
    assert [item.value for item in profile.classes] == [2, 3, 4]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    namespace = {}
    exec(compile(code, "profiles/README.md", "exec"), namespace)
    assert Profile.load(tmp_path / "cracks.json") == namespace["mine"]
    assert namespace["profile"].next_free_value() == 9


# ----------------------------------------------------------------- limits

MAX_CLASSES = 5_000  # the documented limits (profiles/README.md)
MAX_PROFILE_BYTES = 4 * 2**20
SIZE_LIMIT = "4194304 bytes (4 MiB)"


def many_classes(count: int, description: str = "") -> tuple[SegmentationClass, ...]:
    return tuple(
        SegmentationClass(f"class {value}", value, f"#{value * 2654435761 % 2**24:06x}", description)
        for value in range(1, count + 1)
    )


def test_limits_are_the_documented_ones():
    assert (profiles.MAX_CLASSES, profiles.MAX_PROFILE_BYTES) == (MAX_CLASSES, MAX_PROFILE_BYTES)
    text = (ROOT / "profiles" / "README.md").read_text(encoding="utf-8")
    assert "at most 5000 classes" in text and "at most 4 MiB" in text


def test_a_profile_of_the_most_classes_round_trips_within_the_size_limit(tmp_path):
    profile = Profile("Atlas", many_classes(MAX_CLASSES, "a structure of a large brain atlas, say"))
    path = profile.save(tmp_path / "atlas.json")
    assert path.stat().st_size < MAX_PROFILE_BYTES
    started = time.perf_counter()
    assert Profile.load(path) == profile
    assert time.perf_counter() - started < 1.0


def test_one_class_too_many_is_refused_in_python():
    with pytest.raises(ProfileError) as caught:
        Profile("Too many", many_classes(MAX_CLASSES + 1))
    assert str(caught.value) == "classes: 5001 classes are too many: a profile may hold at most 5000"


def test_a_profile_too_large_to_open_again_is_not_saved(tmp_path):
    profile = Profile("Verbose", many_classes(MAX_CLASSES, "x" * 900))
    with pytest.raises(ProfileError) as caught:
        profile.save(tmp_path / "verbose.json")
    assert str(caught.value).startswith(f"Cannot save the profile to {tmp_path / 'verbose.json'}: its file would be ")
    assert str(caught.value).endswith(f"; a profile file may be at most {SIZE_LIMIT}: shorten the descriptions")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- catalogue of bad profile files

DIRECTORY, MISSING = "a directory", "no file"
HEAD = b'{"format": "rwth-sam-profile", "version": 1, "name": "huge", "classes": ['


def _bytes(data) -> bytes:
    return json.dumps(data).encode("utf-8")


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _too_many_classes() -> bytes:
    """5001 classes in 300 kB (compact JSON): under the size limit, over the class limit."""
    classes = [{"name": f"c{value}", "value": value, "color": "#000000"} for value in range(1, MAX_CLASSES + 2)]
    return _bytes({"format": PROFILE_FORMAT, "version": 1, "name": "many", "classes": classes})


def _valid_text() -> str:
    return json.dumps(valid_dict(), ensure_ascii=False)


# (case, file content, whether is_profile_file claims it, the problem Profile.load names after "Cannot load profile <path>: ")
# File content: bytes; an int: a sparse file of that size starting like a profile (the 64 MB file of issue 9); or
# DIRECTORY / MISSING.
CATALOGUE = [
    ("broken JSON", b'{"format": "rwth-sam-profile", "version": 1, "name": "x",}', True, "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 58"),
    ("JSON array at top level", b"[1, 2, 3]", False, "a profile must be a JSON object, not a list"),
    ("JSON string at top level", b'"rwth-sam-profile"', False, "a profile must be a JSON object, not a string"),
    ("another JSON file", _bytes({"images": [], "annotations": []}), False, "format: not an rwth-sam profile: 'format' is missing, expected \"rwth-sam-profile\""),
    ("another format", _bytes({**valid_dict(), "format": "coco"}), False, "format: not an rwth-sam profile: 'format' is 'coco', expected \"rwth-sam-profile\""),
    ("newer version", _bytes({**valid_dict(), "version": 2}), True, "version: profile format version 2 is not supported; this rwth-sam reads version 1 (made by a newer rwth-sam: update rwth-sam to open it)"),
    ("name of a wrong type", _bytes({**valid_dict(), "name": 3}), True, "name: must be a string, not a number"),
    ("classes not a list", _bytes({**valid_dict(), "classes": "casing"}), True, "classes: must be a list of classes, not a string"),
    ("missing key", _bytes({**valid_dict(), "classes": [{"name": "a", "value": 1}]}), True, "classes[0].color: is missing"),
    ("misspelt key", _bytes(_with_class(colour="#ffffff")), True, "classes[1]: unknown key 'colour' (allowed: name, value, color, description)"),
    ("key given twice", b'{"format": "rwth-sam-profile", "version": 1, "name": "a", "name": "b"}', True, "the key 'name' is given twice in one object; each key may appear once"),
    ("duplicate class names", _bytes(_with_class(name="CASING")), True, "classes[1].name: 'CASING' is already the name of classes[0]; class names must be unique"),
    ("duplicate label values", _bytes(_with_class(value=1)), True, "classes[1].value: 1 is already the label value of classes[0] ('casing'); label values must be unique"),
    ("background as a class", _bytes(_with_class(name="Background")), True, "classes[1].name: 'Background' is reserved for label value 0 (unlabelled pixels)"),
    ("label value 0", _bytes(_with_class(value=0)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 0"),
    ("negative label value", _bytes(_with_class(value=-7)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not -7"),
    ("label value 2**31", _bytes(_with_class(value=2**31)), True, "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 2147483648"),
    ("label value of 5000 digits", _bytes(valid_dict())[:-3] + b", \"value\": " + b"9" * 5000 + b"}]}", True, "a number of 5000 digits is too long for a label value"),
    ("float label value", _bytes(_with_class(value=2.0)), True, "classes[1].value: must be a whole number from 1 to 2147483647, not 2.0"),
    ("NaN label value", _bytes(_with_class(value=float("nan"))), True, "classes[1].value: must be a whole number from 1 to 2147483647, not nan"),
    ("boolean label value", _bytes(_with_class(value=True)), True, "classes[1].value: must be a whole number from 1 to 2147483647, not True"),
    ("label value as a string", _bytes(_with_class(value="3")), True, "classes[1].value: must be a whole number from 1 to 2147483647, not '3'"),
    ("nested label value", _bytes(_with_class(value=_nested(50))), True, "classes[1].value: must be a whole number from 1 to 2147483647, not [[[[...]]]]"),
    ("named colour", _bytes(_with_class(color="red")), True, "classes[1].color: 'red' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("short colour", _bytes(_with_class(color="#fff")), True, "classes[1].color: '#fff' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("colour of a megabyte", _bytes(_with_class(color="#" + "f" * 2**20)), True, "classes[1].color: '#" + "f" * 26 + "..." + "f" * 28 + "' is not a colour of the form #rrggbb (e.g. #ff8800)"),
    ("lone surrogate in a name", _valid_text().replace('"anode"', '"an\\ud800ode"').encode(), True, "classes[1].name: holds '\\ud800', half of a surrogate pair, which is no character"),
    ("too many classes", _too_many_classes(), True, "classes: 5001 classes are too many: a profile may hold at most 5000"),
    ("a 64 MiB profile", 64 * 2**20, True, "the file is 67108864 bytes (64.0 MiB); a profile file may be at most 4194304 bytes (4 MiB)"),
    ("one byte too large", HEAD + b" " * (MAX_PROFILE_BYTES - len(HEAD) - 1) + b"]}", True, "the file is 4194305 bytes (4.0 MiB); a profile file may be at most 4194304 bytes (4 MiB)"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, False, "not valid JSON for a profile: it is nested too deeply"),
    ("deep nesting in a profile", HEAD + b"[" * 100_000 + b"]" * 100_000 + b"]}", True, "not valid JSON for a profile: it is nested too deeply"),
    ("UTF-16 with a byte order mark", _valid_text().encode("utf-16"), False, "it is not a UTF-8 text file: it starts with a UTF-16 byte order mark (save it as UTF-8)"),
    ("UTF-16 without a byte order mark", _valid_text().encode("utf-16-le"), False, "it is not a UTF-8 text file: it holds NUL bytes (a binary file, or UTF-16 text)"),
    ("latin-1 bytes", _valid_text().replace("steel can", "Stahlbecher Ü").encode("latin-1"), True, "it is not a UTF-8 text file: byte 0xdc at position 183 is not UTF-8 (save it as UTF-8)"),
    ("binary garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", False, "it is not a UTF-8 text file: byte 0x89 at position 0 is not UTF-8 (save it as UTF-8)"),
    ("empty file", b"", False, "the file is empty"),
    ("only a byte order mark and spaces", codecs.BOM_UTF8 + b" \n\t ", False, "the file is empty"),
    ("a directory", DIRECTORY, False, "Is a directory"),
    ("a nonexistent path", MISSING, False, "No such file or directory"),
]  # fmt: skip


def write_case(folder: Path, content) -> Path:
    path = folder / "case.json"
    if content == DIRECTORY:
        path.mkdir()
    elif isinstance(content, int):
        with path.open("wb") as file:
            file.write(HEAD)
            file.truncate(content)  # sparse: the test writes 70 bytes, not 64 MiB
    elif content != MISSING:
        path.write_bytes(content)
    return path


@pytest.fixture
def errors():
    """The error notifications napari shows while the test runs (no Qt needed)."""
    seen = []

    def record(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def store():
    """The session's profile store, back to the examples before and after."""
    PROFILES.reset()
    yield PROFILES
    PROFILES.reset()


@pytest.mark.parametrize(
    ("content", "claimed", "problem"), [case[1:] for case in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_catalogue_of_bad_profile_files(tmp_path, errors, store, content, claimed, problem):
    """Each bad file is refused with its clear message, by Profile.load and by the reader (File > Open), quickly,
    and the session's profiles stay as they were."""
    path = write_case(tmp_path, content)
    before = store.profiles
    started = time.perf_counter()
    with pytest.raises(ProfileError) as caught:
        Profile.load(path)
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == f"Cannot load profile {path}: {problem}"
    assert is_profile_file(path) is claimed

    assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    if claimed:
        assert errors == [str(caught.value)]
    else:  # only when no other plugin reads *.json does napari hand such a file to rwth-sam
        assert errors == [
            "case.json is not a segmentation profile, and no other installed plugin reads .json files, so nothing "
            f"was opened. {caught.value}"
        ]
    assert store.profiles == before


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\n  "], ids=["BOM", "BOM and spaces"])
def test_a_profile_saved_with_a_byte_order_mark_opens(tmp_path, errors, store, bom):
    """Windows Notepad saves UTF-8 with a byte order mark."""
    path = tmp_path / "notepad.json"
    path.write_bytes(bom + _valid_text().encode("utf-8"))
    assert is_profile_file(path)
    assert Profile.load(path) == example()
    assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    assert errors == [] and store.names == ["Abdominal CT", "Li-ion cylindrical cell", "Cell"]
    assert store.get("Cell") == example()


def test_an_unexpected_failure_while_reading_is_a_short_message(tmp_path, errors, store, monkeypatch):
    """A fault nobody anticipated (here: in the store) is told in one line, not as napari's traceback dialog."""
    path = example().save(tmp_path / "cell.json")

    def fail(profile):
        raise RuntimeError("the disk went away")

    with monkeypatch.context() as failing:
        failing.setattr(store, "add", fail)
        assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    assert errors == ["Opening cell.json failed (RuntimeError: the disk went away). Nothing was changed."]
    assert store.names == ["Abdominal CT", "Li-ion cylindrical cell"]
