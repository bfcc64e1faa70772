"""The README's main command as a user runs it: ``python -m rwth_sam`` on an X server of its own,
a real X middle click on the canvas (xdotool), and the green preview seen in a screenshot.

On software OpenGL (Xvfb's Mesa llvmpipe) this first click used to kill the process: the model load
imported triton after napari's GL context existed (SIGSEGV, exit 139).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import messages
from napari_helpers import SCREENSHOTS

pytestmark = [pytest.mark.gui, pytest.mark.skipif(sys.platform != "linux", reason="drives an X server (Xvfb)")]

SCREEN = (1600, 1000)


@pytest.fixture
def x_display(x_server):
    return x_server(SCREEN)


def screenshot(display: str) -> np.ndarray:
    """The whole screen as (H, W, 3) uint8, as the X server shows it."""
    taken = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True)
    assert taken.returncode == 0, f"xwd failed on {display}: {taken.stderr.decode(errors='replace')}"
    xwd = taken.stdout
    png = subprocess.run(["convert", "xwd:-", "png:-"], input=xwd, capture_output=True, check=True).stdout
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def image_region(shot: np.ndarray) -> tuple[slice, slice] | None:
    """Where the grey image shows on the screen: the largest area of exactly grey pixels (napari's
    theme and text are tinted, a grey colormap is not)."""
    red, green, blue = (shot[..., c].astype(int) for c in range(3))
    grey = (red == green) & (green == blue) & (red > 60)
    components, count = ndimage.label(ndimage.binary_closing(grey, iterations=3))
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum(grey, components, range(1, count + 1))))
    rows, cols = ndimage.find_objects((components == largest).astype(int))[0]
    return (rows, cols) if (rows.stop - rows.start) * (cols.stop - cols.start) > 100 * 100 else None


def preview_pixels(shot: np.ndarray, region) -> int:
    """Pixels tinted by the half-transparent lime preview (the opaque lime point marker excluded)."""
    part = shot[region].astype(int)
    tint = part[..., 1] - np.maximum(part[..., 0], part[..., 2])
    return int(((tint > 40) & (part[..., 1] < 240)).sum())


def wait_for(condition, timeout: float, process, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        result = condition()
        if result is not None:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_main_command_survives_a_real_middle_click_and_shows_the_preview(x_display, tmp_path, mobile_sam_checkpoint):
    checkpoint = mobile_sam_checkpoint
    env = {key: value for key, value in os.environ.items() if not key.startswith(("QT_QPA", "RWTH_SAM_"))}
    env.update(DISPLAY=x_display, RWTH_SAM_CACHE_DIR=str(tmp_path / "no-downloads"))
    log = tmp_path / "app.log"
    command = [sys.executable, "-X", "faulthandler", "-m", "rwth_sam",
               "--model", "mobile_sam_vit_t", "--checkpoint", str(checkpoint), "--device", "cpu"]  # fmt: skip
    with open(log, "w") as output:
        app = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path)
    SCREENSHOTS.mkdir(exist_ok=True)
    try:
        region = wait_for(lambda: image_region(screenshot(x_display)), 180, app, "napari to show the sample volume")
        assert app.poll() is None, (
            f"python -m rwth_sam exited with {app.returncode} at start:\n{log.read_text()[-3000:]}"
        )
        before = screenshot(x_display)
        assert preview_pixels(before, region) < 50, "a preview was shown before any click"
        rows, cols = region
        x = cols.start + int(0.8 * (cols.stop - cols.start))  # on the jelly roll, right of the central void
        y = (rows.start + rows.stop) // 2
        subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "2"], env=env, check=True)
        area = (rows.stop - rows.start) * (cols.stop - cols.start)

        def preview_shown():
            shot = screenshot(x_display)
            return shot if preview_pixels(shot, region) > 0.05 * area else None

        shot = wait_for(preview_shown, 180, app, "the green preview after the middle click")
        assert app.poll() is None, (
            f"python -m rwth_sam died after the click (exit {app.returncode}):\n{log.read_text()[-3000:]}"
        )
        Image.fromarray(shot).save(SCREENSHOTS / "main_command_first_click.png")
    finally:
        app.terminate()
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


# Each script draws napari's canvas (its GL context then exists) before anything loads a model
# package, in the orders a script, a notebook or plain napari's Plugins menu take.
ENTRY_ORDERS = {
    "torch first, then napari, then the widget": ("import torch", "dock()"),
    "napari first, then the widget (Plugins menu)": ("", "dock()"),
    "rwth_sam first, then torchvision after the canvas": ("import rwth_sam", "import torchvision.ops"),
}
SCRIPT = """
{before}
import sys
import napari
import numpy as np
viewer = napari.Viewer()
viewer.add_image(np.random.default_rng(0).random((8, 64, 64)))
viewer.screenshot(canvas_only=True)  # drawn: the GL context exists

def dock():
    viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")  # imports the model packages
    import rwth_sam
    rwth_sam.load_model("mobile_sam_vit_t", pretrained=False, device="cpu")

{after}
print("alive; triton hidden:", sys.modules.get("triton", "absent") is None, flush=True)
viewer.close()
"""


@pytest.mark.parametrize("order", list(ENTRY_ORDERS))
def test_no_crash_whatever_is_imported_first(x_display, tmp_path, order):
    before, after = ENTRY_ORDERS[order]
    env = {key: value for key, value in os.environ.items() if not key.startswith("QT_QPA")}
    env["DISPLAY"] = x_display
    script = SCRIPT.format(before=before, after=after)
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert "alive; triton hidden: True" in result.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [(["--model", "no_such_model"], "Unknown model 'no_such_model'"),
     (["--checkpoint", "/no/such/file.pt"], "checkpoint file not found"),
     (["--device", "tpu"], "device 'tpu' is not available here")],
)  # fmt: skip
def test_bad_start_options_are_refused_before_napari_starts(arguments, message):
    result = subprocess.run([sys.executable, "-m", "rwth_sam", *arguments], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr


@pytest.fixture
def main_in(viewer, monkeypatch):
    """``python -m rwth_sam ARGS`` in this process: its viewer is the test's, and napari.run returns."""
    import napari

    from rwth_sam.__main__ import main

    monkeypatch.setattr(napari, "Viewer", lambda: viewer)
    monkeypatch.setattr(napari, "run", lambda: None)
    return lambda *arguments: main([*arguments, "--device", "cpu"])


def test_main_command_opens_a_ct_file_with_its_geometry_and_one_volume_of_a_4d_file(main_in, viewer, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    volumes = np.arange(4 * 6 * 5 * 3, dtype=np.int16).reshape(4, 6, 5, 3)  # (x, y, z, t)
    affine = np.diag([-0.7, -0.8, 2.5, 1.0])  # LPS stored: shown as is
    affine[:3, 3] = (12.0, 30.0, -40.0)
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volumes[..., 1], affine), path)
    main_in(str(path))
    [image] = [layer for layer in viewer.layers if layer.name == "scan"]
    np.testing.assert_allclose(image.scale, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(image.translate, (-40.0, -30.0, -12.0), rtol=1e-6)  # LPS: x and y negated
    np.testing.assert_array_equal(image.data, volumes[..., 1].transpose(2, 1, 0))

    viewer.layers.clear()
    four_d = tmp_path / "series.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volumes, affine), four_d)
    main_in(str(four_d), "--volume", "2")
    [image] = [layer for layer in viewer.layers if layer.name == "series"]
    np.testing.assert_array_equal(image.data, volumes[..., 2].transpose(2, 1, 0))


def test_main_command_tells_why_a_file_cannot_be_opened_and_opens_nothing(main_in, viewer, tmp_path, notifications):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    main_in(str(path))
    assert [layer.name for layer in viewer.layers if layer.name == "broken"] == []
    assert any("broken.nii.gz could not be read as NIfTI" in text for text in messages(notifications, "error"))


def test_main_command_leaves_a_folder_without_dicom_to_napari(main_in, viewer, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    folder = tmp_path / "slices"
    folder.mkdir()
    for index in range(3):
        tifffile.imwrite(folder / f"slice{index}.tif", np.full((8, 9), index, np.uint8))
    main_in(str(folder))
    [stack] = [layer for layer in viewer.layers if layer.name == "slices"]
    assert stack.data.shape == (3, 8, 9)
