"""Does the GUI thread ever wait? napari under Xvfb, a 10 ms heartbeat timer, real X events.

Each case (volume × model) runs in a fresh process, started as ``python -m rwth_sam`` starts: the
model packages imported, then napari, the image opened, the widget docked. A driver thread sends
real X input with xdotool (middle clicks, arrow keys, Ctrl+Enter, button clicks, a Shift+middle
drag, a contrast slider drag) and waits for each phase's work to end; meanwhile a 10 ms QTimer on
the GUI thread records when it fires. A late tick is a stall: the GUI thread was busy (or waited)
for that long, and the user saw a frozen window. Per phase it reports the longest stall and the
99th percentile of the ticks' lateness.

Phases: opening the widget; a new labels layer; the first click (model load and first
embedding); 10 further clicks; a contrast limits drag (re-segments); a submit (Ctrl+Enter);
scrolling 20 slices (arrow keys; the prefetch embeds behind); an automatic run on a slice; a 3D
propagation over 16 slices (range, box, middle slice, full segmentation).

    . .venv/bin/activate
    python bench/responsiveness.py                          # real battery CT (../shared/data) and the sample
    python bench/responsiveness.py --volumes synthetic --models mobile_sam_vit_t

Goal (2 cores): p99 < 50 ms and longest < 200 ms in every phase. Random weights: the same compute
as the trained ones. Results: bench/results/responsiveness.json, table in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RWTH_SAM_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
REAL_VOLUME = SHARED / "battery_xct_cylindrical_cell_ucl" / "cell_vol_100x728x728_uint8.tif"
HEARTBEAT_MS = 10
GOAL_P99_MS, GOAL_MAX_MS = 50, 200


# ----------------------------------------------------------------------------- the parent
def write_checkpoint(name: str, folder: Path) -> Path:
    import torch

    import rwth_sam

    torch.manual_seed(0)
    path = folder / f"{name}_random.pt"
    torch.save({"model": rwth_sam.load_model(name, pretrained=False, device="cpu").model.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    parser.add_argument("--models", nargs="+", default=["mobile_sam_vit_t", "sam2.1_hiera_tiny"])
    parser.add_argument("--json", default=str(HERE / "results" / "responsiveness.json"))
    parser.add_argument(
        "--profile", action="store_true", help="print what the GUI thread spent each phase on (cProfile)"
    )
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only the phases whose names hold one of these words")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child: "volume:model:checkpoint"
    args = parser.parse_args()
    if args.case:
        volume, model, checkpoint = args.case.split(":", 2)
        return run_case(volume, model, Path(checkpoint))

    import torch

    from harness import machine_info, write_report

    volumes = [v for v in args.volumes if v != "real" or REAL_VOLUME.is_file()]
    if len(volumes) < len(args.volumes):
        print(f"skipping the real volume: {REAL_VOLUME} not found")
    machine = machine_info(torch.device("cpu"), ["napari", "PyQt6", "vispy", "torch"])
    from pyvirtualdisplay import Display

    server = Display(visible=False, size=(1600, 1000), color_depth=24, extra_args=["-nolisten", "tcp", "-noreset"])
    server.start()
    display = server.new_display_var
    cases = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for model in args.models:
                checkpoint = write_checkpoint(model, Path(folder))
                for volume in volumes:
                    print(f"\n== {volume} volume, {model}", flush=True)
                    out = Path(folder) / "case.json"
                    env = {**os.environ, "DISPLAY": display, "RWTH_SAM_BENCH_OUT": str(out)}
                    if args.profile:
                        env["RWTH_SAM_BENCH_PROFILE"] = "1"
                    if args.only:
                        env["RWTH_SAM_BENCH_ONLY"] = ",".join(args.only)
                    env.pop("QT_QPA_PLATFORM", None)
                    subprocess.run(
                        [sys.executable, __file__, "--case", f"{volume}:{model}:{checkpoint}"], env=env, check=True
                    )
                    cases.append(json.loads(out.read_text()))
    finally:
        server.stop()
    print_table(cases)
    Path(args.json).parent.mkdir(exist_ok=True)
    write_report(args.json, {"machine": machine, "heartbeat_ms": HEARTBEAT_MS, "cases": cases})


def print_table(cases: list[dict]) -> None:
    print("\n| phase | " + " | ".join(f"{c['volume']}, {c['model']}" for c in cases) + " |")
    print("|---|" + "---|" * len(cases))
    for phase in cases[0]["phases"]:
        cells = []
        for case in cases:
            p = case["phases"][phase]
            bad = p["p99_ms"] >= GOAL_P99_MS or p["max_ms"] >= GOAL_MAX_MS
            cells.append(f"{p['p99_ms']:.0f} / {p['max_ms']:.0f}{' ✗' if bad else ''} ({p['seconds']:.1f} s)")
        print(f"| {phase} | " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------- the child (one case)
def run_case(volume_name: str, model: str, checkpoint: Path) -> None:
    from rwth_sam.core.models.builtin import import_upstream_packages

    import_upstream_packages()  # as python -m rwth_sam does, before napari
    import napari
    import numpy as np
    from qtpy.QtCore import QObject, Qt, QTimer, Signal

    if volume_name == "real":
        import tifffile

        data = tifffile.imread(REAL_VOLUME)
    else:
        from rwth_sam.core.phantom import battery_phantom

        data = battery_phantom()[0]
    viewer = napari.Viewer()
    viewer.window._qt_window.setGeometry(0, 0, 1600, 1000)
    image = viewer.add_image(data, name=volume_name, contrast_limits=(0, 255))
    ticks: list[float] = []
    collections = track_garbage_collections()
    heartbeat = QTimer(timerType=Qt.TimerType.PreciseTimer, interval=HEARTBEAT_MS)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))

    class GuiCalls(QObject):
        call = Signal(object)

    calls = GuiCalls()
    calls.call.connect(lambda job: job())

    def on_gui(fn):
        """Run ``fn`` on the GUI thread (Qt objects are not thread-safe) and return its result."""
        done, box = threading.Event(), {}

        def job():
            try:
                box["value"] = fn()
            except BaseException as error:  # noqa: BLE001  (re-raised in the driver)
                box["error"] = error
            done.set()

        calls.call.emit(job)
        if not done.wait(600):
            raise TimeoutError("the GUI thread did not answer in 10 minutes")
        if "error" in box:
            raise box["error"]
        return box["value"]

    phases: dict[str, tuple[float, float]] = {}
    driver = Driver(viewer, image, model, checkpoint, on_gui, phases)
    QTimer.singleShot(1000, heartbeat.start)
    QTimer.singleShot(2000, lambda: threading.Thread(target=driver.run, daemon=True).start())
    napari.run()
    report = {"volume": volume_name, "shape": list(data.shape), "model": model, "phases": {}}
    ticks = np.asarray(ticks)
    lateness = np.diff(ticks) * 1000 - HEARTBEAT_MS
    for name, (start, end) in phases.items():
        # every gap between two ticks that overlaps the phase: a stall longer than the phase counts too
        late = lateness[(ticks[1:] >= start) & (ticks[:-1] <= end)]
        pauses = [ms for at, ms in collections if start <= at <= end]
        report["phases"][name] = {
            "seconds": end - start, "ticks": int(late.size),
            "p99_ms": float(np.percentile(late, 99)) if late.size else float("nan"),
            "max_ms": float(late.max()) if late.size else float("nan"),
            "longest_gc_ms": max(pauses, default=0.0),
        }  # fmt: skip
        print(f"{name:32s} {end - start:6.1f} s  p99 {report['phases'][name]['p99_ms']:6.1f} ms  "
              f"max {report['phases'][name]['max_ms']:6.1f} ms  longest gc {max(pauses, default=0):5.1f} ms", flush=True)  # fmt: skip
    if driver.error is not None:
        report["error"] = driver.error
        print("driver failed:", driver.error)
    Path(os.environ["RWTH_SAM_BENCH_OUT"]).write_text(json.dumps(report))


def track_garbage_collections() -> list[tuple[float, float]]:
    """(start, milliseconds) of every garbage collection, in whichever thread: a full one stops all."""
    import gc

    pauses, started = [], {}

    def callback(phase, info):
        now = time.perf_counter()
        if phase == "start":
            started["at"] = now
        elif "at" in started:
            pauses.append((started["at"], (now - started.pop("at")) * 1000))

    gc.callbacks.append(callback)
    return pauses


class Driver:
    """Plays the phases with real X input, from a thread of its own, waiting for each to end."""

    def __init__(self, viewer, image, model, checkpoint, on_gui, phases):
        self.viewer, self.image, self.model, self.checkpoint = viewer, image, model, checkpoint
        self.on_gui, self.phases = on_gui, phases
        self.widget = None
        self.error = None

    # -- X input
    def xdotool(self, *args) -> None:
        subprocess.run(["xdotool", *map(str, args)], check=True)

    def screen_position(self, data_point) -> tuple[int, int]:
        """The screen pixel showing a voxel of the image (through the canvas's own transform)."""

        def find():
            canvas = self.viewer.window._qt_viewer.canvas
            view = canvas.view
            row_axis, col_axis = self.viewer.dims.displayed
            world = self.image.data_to_world(data_point)
            x, y = (view.transform * view.scene.transform).map([world[col_axis], world[row_axis]])[:2]
            native = canvas.native
            ratio = native.devicePixelRatioF()
            from qtpy.QtCore import QPoint

            point = native.mapToGlobal(QPoint(int(x / ratio), int(y / ratio)))
            return point.x(), point.y()

        return self.on_gui(find)

    def screen_rect(self, native) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a Qt widget on the screen."""

        def find():
            corner = native.mapToGlobal(native.rect().topLeft())
            return corner.x(), corner.y(), native.width(), native.height()

        return self.on_gui(find)

    def click_button(self, button) -> None:
        x, y, width, height = self.screen_rect(button.native)
        self.xdotool("mousemove", x + width // 2, y + height // 2, "click", 1)

    def middle_click(self, data_point, *keys) -> None:
        """A middle click on a voxel; returns once its preview is shown."""
        x, y = self.screen_position(data_point)
        down = [arg for key in keys for arg in ("keydown", key)]
        up = [arg for key in keys for arg in ("keyup", key)]
        points = len(self.widget.prompts.points)
        self.xdotool("mousemove", x, y, *down, "click", 2, *up)
        self.wait_until(lambda: len(self.widget.prompts.points) > points, "the click to reach the widget")
        self.wait_idle()

    def focus_canvas(self, data_point) -> None:
        """A left click on the canvas (pan mode: nothing happens), so that keys go to the viewer."""
        x, y = self.screen_position(data_point)
        self.xdotool("mousemove", x, y, "click", 1)

    # -- waiting
    @staticmethod
    def wait_until(condition, what: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.02)

    def wait_idle(self) -> None:
        self.wait_until(lambda: not self.widget.runner.busy, "the model work to end")

    def phase(self, name, action, settle=0.5) -> None:
        only = os.environ.get("RWTH_SAM_BENCH_ONLY")
        if only and name not in ("open the widget", "new labels layer") and not any(w in name for w in only.split(",")):
            return
        profiler = None
        if os.environ.get("RWTH_SAM_BENCH_PROFILE"):
            import cProfile

            profiler = cProfile.Profile()
            self.on_gui(profiler.enable)  # profiles the GUI thread only
        start = time.perf_counter()
        action()
        time.sleep(settle)  # the GUI's answer to the last result (layer refresh, redraw)
        self.phases[name] = (start, time.perf_counter())
        print(f"  {name}: {self.phases[name][1] - start:.1f} s", flush=True)
        if profiler is not None:
            import pstats

            self.on_gui(profiler.disable)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)

    # -- the phases
    def run(self) -> None:
        try:
            self.play()
        except Exception as error:  # noqa: BLE001  (reported, and the viewer closed)
            import traceback

            traceback.print_exc()
            self.error = f"{type(error).__name__}: {error}"
        finally:
            time.sleep(0.5)
            self.on_gui(self.viewer.close)

    def play(self) -> None:
        from rwth_sam.ui.widget import AUTOMATIC_MODE, CLICK_MODE, VOLUME_MODE

        time.sleep(1.0)  # a quiet stretch first
        image, depth, height, width = self.image, *self.image.data.shape
        middle = depth // 2

        def scroll():
            for _ in range(20):
                self.xdotool("key", "Right")
                time.sleep(0.15)

        self.on_gui(lambda: self.viewer.dims.set_point(0, middle - 10))
        self.focus_canvas((middle, height * 0.05, width * 0.05))
        self.phase("napari alone: scroll 20 slices", scroll)  # the floor: napari's own slicing and drawing

        self.on_gui(lambda: self.viewer.dims.set_point(0, middle))

        def open_widget():
            _, self.widget = self.viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
            self.widget.model.value, self.widget.checkpoint.value = self.model, self.checkpoint
            self.widget.device.value = "cpu"

        self.phase("open the widget", lambda: self.on_gui(open_widget))
        widget = self.widget
        self.on_gui(lambda: self.viewer.dims.set_point(0, middle))
        self.phase("new labels layer", lambda: self.click_button(widget.new_labels))

        self.phase("first click (load, embed)", lambda: self.middle_click((middle, height * 0.5, width * 0.8)))

        def clicks():
            for i in range(10):
                row, col = height * (0.3 + 0.04 * i), width * (0.25 + 0.05 * i)
                self.middle_click((middle, row, col), *(("ctrl",) if i % 3 == 2 else ()))

        self.phase("10 further clicks", clicks)

        def contrast():
            slider = self.on_gui(
                lambda: (
                    self.viewer.window._qt_viewer.controls.widgets[
                        image
                    ]._contrast_limits_control.contrast_limits_slider
                )
            )
            x0, y0, w, h = self.screen_rect(slider)
            x, y = x0 + w - 4, y0 + h // 2  # the upper handle
            self.xdotool("mousemove", x, y, "mousedown", 1)
            for step in range(1, 11):
                self.xdotool("mousemove", x - step * w // 30, y)
                time.sleep(0.05)
            self.xdotool("mouseup", 1)
            time.sleep(0.5)  # the re-segmentation starts once the slider rests
            self.wait_idle()

        self.on_gui(lambda: setattr(self.viewer.layers.selection, "active", image))
        self.phase("contrast limits drag", contrast)
        self.focus_canvas((middle, height * 0.05, width * 0.05))
        self.phase("submit (Ctrl+Enter)", lambda: self.xdotool("key", "ctrl+Return"))
        if "submit (Ctrl+Enter)" in self.phases and "Submitted" not in widget.status.value:
            raise RuntimeError(f"Ctrl+Enter did not submit: {widget.status.value}")

        def scroll_and_prefetch():
            scroll()
            self.wait_idle()

        self.on_gui(lambda: self.viewer.dims.set_point(0, middle - 10))
        self.phase("scroll 20 slices (prefetch)", scroll_and_prefetch)

        def automatic():
            panel = widget.automatic
            self.on_gui(lambda: setattr(widget.mode, "value", AUTOMATIC_MODE))
            self.on_gui(lambda: setattr(panel.setting_controls["points_per_side"], "value", 16))
            self.click_button(panel.run_slice)
            self.wait_idle()

        self.phase("automatic run on a slice", automatic)

        def propagation():
            panel = widget.volume
            start = max(0, middle - 8)
            self.on_gui(lambda: setattr(widget.mode, "value", VOLUME_MODE))
            self.on_gui(lambda: self.viewer.dims.set_point(0, start))
            self.click_button(panel.set_start)
            self.on_gui(lambda: self.viewer.dims.set_point(0, start + 15))
            self.click_button(panel.set_end)
            centre = (start + start + 15) // 2
            x0, y0 = self.screen_position((centre, height * 0.3, width * 0.3))
            x1, y1 = self.screen_position((centre, height * 0.7, width * 0.7))
            self.xdotool("mousemove", x0, y0, "keydown", "shift", "mousedown", 2)
            for t in (0.25, 0.5, 0.75, 1.0):
                self.xdotool("mousemove", int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0)))
                time.sleep(0.05)
            self.xdotool("mouseup", 2, "keyup", "shift")
            time.sleep(0.3)
            self.click_button(panel.add_box)
            self.click_button(panel.segment_middle)
            self.wait_idle()
            self.click_button(panel.full)
            self.wait_idle()
            if "Propagation done" not in widget.status.value:
                raise RuntimeError(f"propagation did not finish: {widget.status.value}")

        self.phase("3D propagation, 16 slices", propagation)
        self.on_gui(lambda: setattr(widget.mode, "value", CLICK_MODE))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
