"""The dock on a laptop screen (1366×768) and a desktop one (1920×1080), in each mode, as ``python -m rwth_sam``
starts it (``screen_fit_driver.py`` on an X server of that size): napari's window stays on the screen, the
status, the last error, the run buttons and *Cancel* can be seen on it, and the canvas keeps a third of the
window's width. The sample's empty labels layer, not its truth, is the target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_helpers import SCREENSHOTS

pytestmark = [pytest.mark.gui, pytest.mark.skipif(sys.platform != "linux", reason="drives an X server (Xvfb)")]

DRIVER = Path(__file__).with_name("screen_fit_driver.py")
MODES = ("click", "automatic", "3d")


def inside(rect: dict, area: dict) -> bool:
    return (
        rect["x"] >= area["x"] and rect["y"] >= area["y"]
        and rect["x"] + rect["width"] <= area["x"] + area["width"]
        and rect["y"] + rect["height"] <= area["y"] + area["height"]
    )  # fmt: skip


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)], ids=["1366x768", "1920x1080"])
def test_every_mode_fits_the_screen_and_shows_what_matters(x_server, tmp_path, mobile_sam_checkpoint, size):
    display = x_server(size)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("QT_QPA", "RWTH_SAM_"))}
    env.update(DISPLAY=display, RWTH_SAM_CACHE_DIR=str(tmp_path / "no-downloads"))
    out = tmp_path / "shots"
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(DRIVER), str(out), str(mobile_sam_checkpoint)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    report = json.loads((out / "geometry.json").read_text())
    screen = report["screen"]
    assert (screen["width"], screen["height"]) == size
    assert report["labels target"] == "battery phantom labels", report["labels layers"]
    SCREENSHOTS.mkdir(exist_ok=True)
    for mode in MODES:
        shutil.copy(out / f"{mode}.png", SCREENSHOTS / f"screen_{size[0]}x{size[1]}_{mode}.png")
        seen = report["modes"][mode]
        window = seen["window"]
        assert inside(window, screen), f"{mode}: napari's window {window} is pushed off the {size} screen"
        assert seen["canvas"]["width"] >= window["width"] / 3, f"{mode}: the canvas is squeezed: {seen['canvas']}"
        shown = {"status": seen["status"], "last error": seen["error"], **seen["controls"]}
        for name, rect in shown.items():
            assert rect["seen"], f"{mode} at {size}: {name} is hidden or scrolled away: {rect}"
            assert inside(rect, screen), f"{mode} at {size}: {name} lies off the screen: {rect}"
            assert inside(rect, seen["dock"]), f"{mode} at {size}: {name} lies outside the dock: {rect}"
