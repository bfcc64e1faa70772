"""``python -m rwth_sam`` as a user starts it, on the X server of $DISPLAY, its window filling the screen as a
window manager maximises it; then each mode in turn, with an error reported: where the controls that matter
lie on the screen, and a screenshot per mode. Run by ``test_screen_fit.py``:

    python tests/screen_fit_driver.py OUT_FOLDER CHECKPOINT

Writes ``OUT_FOLDER/geometry.json`` and ``OUT_FOLDER/<mode>.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MODES = {"click": "Click prompts", "automatic": "Automatic (everything)", "3d": "3D propagation"}


def settle(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)


def rect(widget) -> dict:
    """A widget's place on the screen (global geometry), and whether any of it can be seen (not hidden,
    not scrolled out of its scroll area)."""
    from qtpy.QtCore import QPoint

    native = widget.native if hasattr(widget, "native") else widget
    corner = native.mapToGlobal(QPoint(0, 0))
    return {
        "x": corner.x(), "y": corner.y(), "width": native.width(), "height": native.height(),
        "seen": native.isVisible() and not native.visibleRegion().isEmpty(),
    }  # fmt: skip


def run_controls(widget, mode: str) -> dict:
    if mode == "click":
        return {"submit": widget.submit_button, "clear": widget.clear_button}
    if mode == "automatic":
        panel = widget.automatic
        return {"segment slice": panel.run_slice, "segment volume": panel.run_volume, "cancel": panel.cancel}
    panel = widget.volume
    return {"segment middle slice": panel.segment_middle, "full segmentation": panel.full, "cancel": panel.cancel}


def while_running(widget, mode: str) -> dict:
    """A run started with the dock scrolled to its top and more messages kept: its progress bar and *Cancel*
    come into view. (The run waits for *Cancel*: no model is needed.)"""
    import time

    panel = widget.automatic if mode == "automatic" else widget.volume
    for number in range(3):
        widget.keep(f"A result kept in {mode} mode, number {number + 1}.")
    widget.controls_area.verticalScrollBar().setValue(0)
    settle(1)

    def job(step, should_stop):
        step(1, 3)
        while not should_stop():
            time.sleep(0.05)

    panel.run.start(job, lambda _: None, "Waiting for Cancel", 3)
    settle(2)
    seen = {"progress while running": rect(panel.run.progress), "cancel while running": rect(panel.cancel)}
    panel.cancel.clicked.emit()
    settle(1)
    return seen


def check(out: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from rwth_sam.core.errors import InputError
    from rwth_sam.ui.widget import SamWidget

    from napari_helpers import canvas_widget, main_window  # the napari internals, checked by their test

    viewer = napari.current_viewer()
    [widget] = [w for w in viewer.window.dock_widgets.values() if isinstance(w, SamWidget)]
    window = main_window(viewer)
    screen = QApplication.primaryScreen()
    window.setGeometry(screen.availableGeometry())  # maximised, as a window manager would
    settle(3)
    geometry = screen.geometry()
    report = {
        "screen": {"x": geometry.x(), "y": geometry.y(), "width": geometry.width(), "height": geometry.height()},
        "modes": {},
    }
    report["labels target"] = getattr(widget.labels_picker.value, "name", None)
    report["labels layers"] = [layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Labels)]
    for key, mode in MODES.items():
        widget.mode.value = mode
        widget.report_error(InputError(f"An example error in {key} mode, kept until dismissed."))
        widget.say(f"The status in {key} mode.")
        settle(2)
        frame = window.frameGeometry()
        controls = {name: rect(control) for name, control in run_controls(widget, key).items()}
        if key != "click":
            controls.update(while_running(widget, key))
        report["modes"][key] = {
            "window": {"x": frame.x(), "y": frame.y(), "width": frame.width(), "height": frame.height()},
            "canvas": rect(canvas_widget(viewer)),
            "status": rect(widget.status),
            "error": rect(widget.messages.rows[0]),
            "controls": controls,
            "dock": rect(widget),
        }
        shot = out / f"{key}.png"
        xwd = subprocess.run(["xwd", "-root", "-silent"], capture_output=True, check=True).stdout
        subprocess.run(["convert", "xwd:-", f"png:{shot}"], input=xwd, check=True)
    (out / "geometry.json").write_text(json.dumps(report, indent=1))
    viewer.close()


def main() -> None:
    out, checkpoint = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    import napari

    from rwth_sam.__main__ import main as rwth_sam_main

    napari.run = lambda: check(out)  # the main command runs as it is, then the check instead of the event loop
    rwth_sam_main(["--model", "mobile_sam_vit_t", "--checkpoint", checkpoint, "--device", "cpu"])


if __name__ == "__main__":
    main()
