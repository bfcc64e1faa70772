"""Segmentation profiles in the core: JSON round trip, validation messages, example profiles, and the
catalogue of bad profile files, each read as File > Open reads it (no Qt)."""

from __future__ import annotations

import codecs
import json
import time
from pathlib import Path

import pytest
from napari.utils.notifications import NotificationSeverity

from rwth_sam.core import phantom
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels import profiles
from rwth_sam.core.labels.profile_store import PROFILES, ProfileStore
from rwth_sam.core.labels.profiles import (
    PALETTE,
    PROFILE_FORMAT,
    PROFILE_VERSION,
    DuplicateClassError,
    Profile,
    ProfileError,
    SegmentationClass,
    builtin_profiles,
    builtin_profiles_dir,
    is_profile_file,
    readable_text_color,
)
from rwth_sam.ui import reader

from conftest import (
    CATALOGUE,
    MAX_CLASSES,
    MAX_PROFILE_BYTES,
    example_profile,
    example_profile_dict,
    example_profile_text,
    example_with_class,
    many_classes,
    messages,
    write_case,
)

ROOT = Path(__file__).resolve().parents[1]
TOTALSEG_LABELS = ROOT.parent / "shared" / "data" / "medct_totalseg_wholebody" / "totalsegmentator_total_labels.json"


def test_json_round_trip(tmp_path):
    profile = example_profile()
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
    profile = example_profile()
    assert profile.class_by_value(3).name == "anode"
    assert profile.class_by_value(4) is None
    assert profile.class_by_name(" Cathode ").value == 2
    assert profile.class_by_name("pore") is None
    assert profile.next_free_value() == 4
    assert Profile("empty").next_free_value() == 1
    assert Profile("top", (SegmentationClass("a", 2**31 - 1, "#000000"),)).next_free_value() == 1


def test_color_dict_and_features():
    profile = example_profile()
    assert profile.color_dict() == {None: "transparent", 0: "transparent", 1: "#9e9e9e", 3: "#1f77b4", 2: "#d62728"}
    assert profile.color_dict(unknown="#808080")[None] == "#808080"
    assert profile.features() == {"index": [0, 1, 3, 2], "class": ["background", "casing", "anode", "cathode"]}


def test_profile_error_is_an_input_error():
    assert issubclass(ProfileError, InputError) and issubclass(ProfileError, ValueError)


# fmt: off
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a profile must be a JSON object, not a list"),
        ({**example_profile_dict(), "format": "other"}, "format: not an rwth-sam profile: 'format' is 'other', expected \"rwth-sam-profile\""),
        ({key: value for key, value in example_profile_dict().items() if key != "format"}, "format: not an rwth-sam profile: 'format' is missing"),
        ({**example_profile_dict(), "version": "1"}, "version: must be a whole number (this rwth-sam reads version 1), not '1'"),
        ({key: value for key, value in example_profile_dict().items() if key != "version"}, "version: must be a whole number (this rwth-sam reads version 1), not missing"),
        ({**example_profile_dict(), "version": 2}, "version: profile format version 2 is not supported; this rwth-sam reads version 1 (made by a newer rwth-sam"),
        ({**example_profile_dict(), "version": 0}, "version: profile format version 0 is not supported; this rwth-sam reads version 1"),
        ({**example_profile_dict(), "colour": "x"}, "unknown key 'colour' (allowed: format, version, name, description, classes)"),
        ({key: value for key, value in example_profile_dict().items() if key != "name"}, "name: is missing"),
        ({**example_profile_dict(), "name": "  "}, "name: must not be empty"),
        ({**example_profile_dict(), "name": 3}, "name: must be a string, not a number"),
        ({**example_profile_dict(), "description": None}, "description: must be a string, not null"),
        ({**example_profile_dict(), "classes": {"a": 1}}, "classes: must be a list of classes, not an object"),
        ({**example_profile_dict(), "classes": [1]}, "classes[0]: a class must be an object with name, value, color, description, not a number"),
        (example_with_class(colour="#ffffff"), "classes[1]: unknown key 'colour' (allowed: name, value, color, description)"),
        ({**example_profile_dict(), "classes": [{"name": "a", "value": 1}]}, "classes[0].color: is missing"),
        (example_with_class(name=""), "classes[1].name: must not be empty"),
        (example_with_class(name=["a"]), "classes[1].name: must be a string, not a list"),
        (example_with_class(name="Background"), "classes[1].name: 'Background' is reserved for label value 0"),
        (example_with_class(name="CASING"), "classes[1].name: 'CASING' is already the name of classes[0]; class names must be unique"),
        (example_with_class(value=0), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 0"),
        (example_with_class(value=-4), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not -4"),
        (example_with_class(value=2**31), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 2147483648"),
        (example_with_class(value=2.5), "classes[1].value: must be a whole number from 1 to 2147483647, not 2.5"),
        (example_with_class(value=True), "classes[1].value: must be a whole number from 1 to 2147483647, not True"),
        (example_with_class(value="3"), "classes[1].value: must be a whole number from 1 to 2147483647, not '3'"),
        (example_with_class(value=1), "classes[1].value: 1 is already the label value of classes[0] ('casing'); label values must be unique"),
        (example_with_class(color="red"), "classes[1].color: 'red' is not a colour of the form #rrggbb (e.g. #ff8800)"),
        (example_with_class(color="#fff"), "classes[1].color: '#fff' is not a colour of the form #rrggbb"),
        (example_with_class(color="#12345g"), "classes[1].color: '#12345g' is not a colour of the form #rrggbb"),
        (example_with_class(color=None), "classes[1].color: None is not a colour of the form #rrggbb"),
        (example_with_class(description=5), "classes[1].description: must be a string, not a number"),
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
    path.write_text(json.dumps({**example_profile_dict(), "version": 3}), encoding="utf-8")
    with pytest.raises(
        ProfileError, match=r"version 3 is not supported; this rwth-sam reads version 1 \(made by a newer"
    ):
        Profile.load(path)


def test_invalid_file_message_names_the_file_and_path(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(example_with_class(color="#12")), encoding="utf-8")
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
        example_profile().save(tmp_path / "no such folder" / "p.json")


def test_is_profile_file(tmp_path):
    good = example_profile().save(tmp_path / "good.json")
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


def test_errors_say_where_they_are_for_a_table_of_the_classes():
    """The widget points at the row and column from the error's fields, and words it as its table does."""
    with pytest.raises(DuplicateClassError) as caught:
        Profile.from_dict(example_with_class(name="CASING"))
    error = caught.value
    assert (error.class_index, error.field, error.same_as, error.path) == (1, "name", 0, "classes[1].name")
    assert error.table_message() == "Row 2, name: 'CASING' is already the name of row 1; class names must be unique"
    with pytest.raises(DuplicateClassError) as caught:
        Profile.from_dict(example_with_class(value=1))
    assert caught.value.table_message() == (
        "Row 2, label value: 1 is already the label value of row 1 ('casing'); label values must be unique"
    )
    with pytest.raises(ProfileError) as caught:
        Profile.from_dict(example_with_class(color="red"))
    assert (caught.value.class_index, caught.value.field) == (1, "color")
    assert caught.value.table_message().startswith("Row 2, colour: 'red' is not a colour")
    with pytest.raises(ProfileError) as caught:
        Profile.from_dict(example_with_class(colour="#ffffff"))
    assert caught.value.table_message().startswith("Row 2: unknown key 'colour'")
    with pytest.raises(ProfileError) as caught:
        Profile(" ")
    assert (caught.value.class_index, caught.value.field) == (None, "name")
    assert caught.value.table_message() == "Profile name: must not be empty"
    with pytest.raises(ProfileError) as caught:
        Profile("Too many", many_classes(MAX_CLASSES + 1))
    assert caught.value.table_message() == "Classes: 5001 classes are too many: a profile may hold at most 5000"
    with pytest.raises(ProfileError) as caught:
        Profile.load(Path("/nonexistent/case.json"))
    assert caught.value.path is None and caught.value.table_message() == str(caught.value)
    name_with_braces = Profile("p", (SegmentationClass("{0}", 1, "#000000"),))
    with pytest.raises(DuplicateClassError, match=r"^classes\[1\]\.name: '\{0\}' is already the name of classes\[0\]"):
        Profile("p", (*name_with_braces.classes, SegmentationClass("{0}", 2, "#000000")))


# ----------------------------------------------------------------- rules for new classes and files


def test_a_new_class_gets_a_new_name_the_next_value_and_an_unused_colour():
    assert Profile("empty").new_class() == SegmentationClass("class 1", 1, PALETTE[0])
    profile = example_profile()  # colours #9e9e9e, #1f77b4 (the palette's first), #d62728
    assert profile.new_class() == SegmentationClass("class 4", 4, PALETTE[1])
    assert profile.new_class("pore", 9, "#ABCDEF", "voids") == SegmentationClass("pore", 9, "#abcdef", "voids")
    taken = Profile("taken", (SegmentationClass("class 2", 5, "#000000"),))
    assert taken.new_class().name == "class 3"  # "class 2", the row's number, is taken


def test_new_colours_are_the_palette_then_distinct_hues():
    profile = Profile("many")
    for _ in range(40):
        profile = Profile("many", (*profile.classes, profile.new_class()))
    colors = [item.color for item in profile.classes]
    assert tuple(colors[: len(PALETTE)]) == PALETTE
    assert len(set(colors)) == len(colors)


def test_a_new_class_refused_is_located_in_the_row_it_would_take():
    with pytest.raises(ProfileError) as caught:
        example_profile().new_class(color="red")
    assert (caught.value.class_index, caught.value.field) == (3, "color")
    assert str(caught.value).startswith("classes[3].color: 'red' is not a colour")
    assert caught.value.table_message().startswith("Row 4, colour: 'red' is not a colour")


@pytest.mark.parametrize(
    ("background", "text"), [("#ffffff", "#000000"), ("#9e9e9e", "#000000"), ("#1f77b4", "#ffffff"), ("#0000ff", "#ffffff")]
)
def test_text_on_a_class_colour_is_black_or_white_whichever_reads(background, text):
    assert readable_text_color(background) == text


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("Li-ion cylindrical cell", "li-ion_cylindrical_cell.json"), ("Abdominal CT", "abdominal_ct.json"),
     ("Zellen – Ü", "zellen_ü.json"), ("a/b\\c", "a_b_c.json"), ("???", "profile.json")],
)  # fmt: skip
def test_a_profile_is_saved_by_default_under_its_name(name, file_name):
    assert Profile(name).file_name() == file_name


# ----------------------------------------------------------------- the session's profile store


def test_store_starts_with_the_examples_and_signals_changes(profile_store):
    assert PROFILES is profile_store and PROFILES.names == ["Abdominal CT", "Li-ion cylindrical cell"]
    store, events = ProfileStore(), []
    store.changed.connect(lambda: events.append(store.names))
    store.add(example_profile())
    store.add(Profile("other"))
    store.add(Profile("Cell", description="replaced"))  # same name: replaced in place
    assert store.names == ["Cell", "other"] and store.get("Cell").description == "replaced"
    store.replace("Cell", Profile("renamed"))  # a rename keeps the place
    assert store.names == ["renamed", "other"]
    with pytest.raises(ProfileError, match="There is already a profile named 'other'"):
        store.replace("renamed", Profile("other"))
    store.remove("other")
    assert events == [["Cell"], ["Cell", "other"], ["Cell", "other"], ["renamed", "other"], ["renamed"]]
    assert store.get("other") is None and "renamed" in store and len(store) == 1
    assert store.unique_name("renamed") == "renamed 2" and store.unique_name("free") == "free"
    with pytest.raises(KeyError):
        store.remove("other")
    with pytest.raises(TypeError, match="expected a Profile"):
        store.add({"name": "not a profile"})
    assert events[-1] == ["renamed"]


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

SIZE_LIMIT = "4194304 bytes (4 MiB)"


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

@pytest.mark.parametrize(
    ("content", "claimed", "problem"), [case[1:] for case in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_catalogue_of_bad_profile_files(tmp_path, notifications, profile_store, content, claimed, problem):
    """Each bad file is refused with its clear message, by Profile.load and by the reader (File > Open), quickly,
    and the session's profiles stay as they were."""
    path = write_case(tmp_path, content)
    before = profile_store.profiles
    started = time.perf_counter()
    with pytest.raises(ProfileError) as caught:
        Profile.load(path)
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == f"Cannot load profile {path}: {problem}"
    assert is_profile_file(path) is claimed

    assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    errors = messages(notifications, NotificationSeverity.ERROR)
    if claimed:
        assert errors == [str(caught.value)]
    else:  # only when no other plugin reads *.json does napari hand such a file to rwth-sam
        assert errors == [
            "case.json is not a segmentation profile, and no other installed plugin reads .json files, so nothing "
            f"was opened. {caught.value}"
        ]
    assert profile_store.profiles == before


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\n  "], ids=["BOM", "BOM and spaces"])
def test_a_profile_saved_with_a_byte_order_mark_opens(tmp_path, notifications, profile_store, bom):
    """Windows Notepad saves UTF-8 with a byte order mark."""
    path = tmp_path / "notepad.json"
    path.write_bytes(bom + example_profile_text().encode("utf-8"))
    assert is_profile_file(path)
    assert Profile.load(path) == example_profile()
    assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    assert messages(notifications, NotificationSeverity.ERROR) == [] and profile_store.names == ["Abdominal CT", "Li-ion cylindrical cell", "Cell"]
    assert profile_store.get("Cell") == example_profile()


def test_an_unexpected_failure_while_reading_is_a_short_message(tmp_path, notifications, profile_store, monkeypatch):
    """A fault nobody anticipated (here: in the store) is told in one line, not as napari's traceback dialog."""
    path = example_profile().save(tmp_path / "cell.json")

    def fail(profile):
        raise RuntimeError("the disk went away")

    with monkeypatch.context() as failing:
        failing.setattr(profile_store, "add", fail)
        assert reader.read_profiles(str(path)) == reader.NO_LAYERS
    assert messages(notifications, NotificationSeverity.ERROR) == ["Opening cell.json failed (RuntimeError: the disk went away). Nothing was changed."]
    assert profile_store.names == ["Abdominal CT", "Li-ion cylindrical cell"]
