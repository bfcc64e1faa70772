"""Volumes of any size (issue 12): memory and click latency of the widget from 256³ to 2048³.

Synthetic uint16 zarr volumes (the battery phantom tiled), generated slab by slab into a folder and
reused by later runs, are opened lazily in napari (``viewer.add_image`` of the ``zarr.Array``, as a
user's script or reader would) with the widget docked: SAM 2.1-t (``sam2.1_hiera_tiny``, random
weights from a checkpoint this script writes: nothing is downloaded) on the CPU. Each size runs in
a fresh process (so peak memory is per size) on an Xvfb of its own, driven through napari's own
canvas events, as the tests drive it (``tests/napari_helpers.py``). Steps:

* open: ``viewer.add_image(zarr_array)`` and the first drawing of the middle slice;
* dock the widget (model, checkpoint, device);
* first click (loading the model, embedding the slice) — the **baseline** is the resident memory
  once it is shown: napari, the widget, the loaded model and one slice embedded;
* 10 further clicks (every third negative) on the same slice, each timed from the click to its
  preview being in the preview layer (``PromptSession.predicted`` handled), the model's share
  (the worker's ``predict``) timed apart;
* *New labels layer for image* (above the widget's *Labels on disk above*, a zarr folder on disk);
* submit the preview;
* 3D propagation over 32 slices: *Set start/end slice* (the range is then embedded in the
  background: timed until the runner is idle), a box on the middle slice (Shift+middle drag),
  *Add box*, *Segment middle slice*, *Full segmentation*;
* save the labels (``widget.save_labels_as`` with a ``.tif``, written in a worker slab by slab).

Per step: wall time, peak resident memory (``VmHWM``, reset before the step through
``/proc/self/clear_refs``), resident memory after it, the longest stall of a 20 ms heartbeat timer
on the GUI thread, and an error with its traceback if the step failed. A watchdog thread samples
resident memory every 10 ms: above ``--memory-cap-gb`` over the baseline, or with less than
``--min-available-gb`` left on the machine while this process is itself more than the goal above
its baseline, it writes every thread's Python stack (faulthandler) into the report and ends the
process, so a step that grows with the volume is reported, not swapped or killed by the kernel.
The parent then goes on with the next size. (A machine short of memory through other processes
is only noted.)

    . .venv/bin/activate
    python bench/scale.py                                 # 256 512 1024 2048, volumes in /tmp/rwth-sam-scale
    python bench/scale.py --sizes 256 512 --folder /data/scale
    python bench/scale.py --sizes 2048 --merge            # add a size to the results of an earlier run
    python bench/scale.py --rebuild                       # the tables again from the JSON (nothing run)
    python bench/scale.py --sections volumes clicks       # and the click latency again, sizes interleaved

Goals (issue 12, 2 CPU cores): peak memory above the baseline ≤ 1.5 GB at every size; click
latency within 10 % of the 256³ case. Results: ``bench/results/scale.json`` (everything) and
``bench/results/scale.md`` (the tables, machine, date and command), also printed.

Sections: the run is a list of sections (``SECTIONS``: a name, the function that runs it with the
run's context and returns its raw data, and the one that makes its report, a title and markdown
lines, from that data): ``volumes``, the steps above for each size, and ``clicks``, only the
clicks again, every size once in each of ``--rounds`` rounds, so that load from other processes
drifting over the run hits every size alike (the ratio to 256³ is taken per round); both reuse
the volumes. ``pores``: a 2048² slice with 8-pixel pores, each prompted with a point on the whole
slice and in the native region around it (in this process, without napari).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL = "sam2.1_hiera_tiny"
SIZES = {"256": (256, 256, 256), "512": (512, 512, 512), "1024": (1024, 1024, 1024), "2048": (2048, 2048, 2048)}
TILE = (64, 256, 256)  # one battery_phantom cell; the volume repeats it along every axis
CHUNKS = (16, 256, 256)  # zarr chunks: a slice along axis 0 decompresses 16 slices' worth
INTENSITY_SCALE = 100  # the phantom's uint8 intensities × 100: uint16 values 0..25500
VOLUME_ATTRIBUTE = "rwth_sam_bench_scale"
VOLUME_VERSION = 1
COMPRESSED_RATIO = 0.75  # zarr's default zstd stores this phantom at about 0.67 of its raw size
RANGE_SLICES = 32
CLICKS = 10
HEARTBEAT_MS = 20
GOAL_MEMORY_GB = 1.5
GOAL_LATENCY_RATIO = 1.10
GB = 2**30
MB = 2**20


# ============================================================================= volumes
def volume_path(folder: Path, shape: tuple[int, ...]) -> Path:
    return folder / f"phantom_{'x'.join(map(str, shape))}_uint16.zarr"


def raw_bytes(shape: tuple[int, ...]) -> int:
    return 2 * shape[0] * shape[1] * shape[2]


def stored_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) if path.exists() else 0


def phantom_tile():
    import numpy as np

    from rwth_sam.core.phantom import battery_phantom

    image, _ = battery_phantom(TILE, seed=0)
    return image.astype(np.uint16) * INTENSITY_SCALE


def volume_state(path: Path, shape: tuple[int, ...]) -> dict | None:
    """The generation record of an existing volume of ``shape`` made by this script, else None."""
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except Exception:  # noqa: BLE001  (no array there, or not a zarr one)
        return None
    state = dict(array.attrs.get(VOLUME_ATTRIBUTE) or {})
    same = tuple(array.shape) == shape and tuple(array.chunks) == CHUNKS and str(array.dtype) == "uint16"
    return state if same and state.get("version") == VOLUME_VERSION else None


def ensure_volume(folder: Path, shape: tuple[int, ...]) -> dict:
    """The volume of ``shape`` in ``folder``: reused when an earlier run finished it, resumed where an
    interrupted one stopped, else generated slab by slab (``CHUNKS[0]`` slices at a time: memory of
    one slab). Refuses (``skipped``) when the disk cannot hold it."""
    import numpy as np
    import zarr

    path = volume_path(folder, shape)
    state = volume_state(path, shape)
    if state is not None and state.get("complete"):
        return {"path": str(path), "reused": True, "stored_gb": stored_bytes(path) / GB, "generate_s": 0.0}
    done = int(state["slices_written"]) if state is not None else 0
    needed = raw_bytes(shape) * COMPRESSED_RATIO * (1 - done / shape[0]) + 2 * GB  # + labels, the saved .tif
    free = shutil.disk_usage(folder).free
    if needed > free:
        return {
            "path": str(path),
            "skipped": f"needs about {needed / GB:.1f} GB on disk (the compressed volume and 2 GB for the labels), "
            f"{free / GB:.1f} GB free in {folder}",
        }
    started = time.perf_counter()
    if state is None:
        if path.exists():
            shutil.rmtree(path)
        array = zarr.create_array(path, shape=shape, chunks=CHUNKS, dtype="uint16", fill_value=0)
        array.attrs[VOLUME_ATTRIBUTE] = {"version": VOLUME_VERSION, "slices_written": 0, "complete": False}
    else:
        array = zarr.open_array(path, mode="r+")
    tile = phantom_tile()
    reps = (1, shape[1] // TILE[1], shape[2] // TILE[2])
    depth = CHUNKS[0]
    print(f"  generating {path.name} ({raw_bytes(shape) / GB:.2f} GB raw) from slice {done}", flush=True)
    for z in range(done, shape[0], depth):
        offset = z % TILE[0]
        array[z : z + depth] = np.tile(tile[offset : offset + depth], reps)
        array.attrs[VOLUME_ATTRIBUTE] = {"version": VOLUME_VERSION, "slices_written": z + depth, "complete": False}
    array.attrs[VOLUME_ATTRIBUTE] = {
        "version": VOLUME_VERSION, "slices_written": shape[0], "complete": True,
        "tile": list(TILE), "chunks": list(CHUNKS), "intensity_scale": INTENSITY_SCALE,
    }  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"  generated in {seconds:.0f} s, {stored_bytes(path) / GB:.2f} GB on disk", flush=True)
    return {"path": str(path), "reused": False, "stored_gb": stored_bytes(path) / GB, "generate_s": seconds}


def write_checkpoint(folder: Path) -> Path:
    """SAM 2.1-t with seeded random weights, as the widget loads a local checkpoint (written once)."""
    path = folder / f"{MODEL}_random_seed0.pt"
    if not path.is_file():
        import torch

        import rwth_sam

        torch.manual_seed(0)
        predictor = rwth_sam.load_model(MODEL, pretrained=False, device="cpu")
        partial = path.with_suffix(".partial")
        torch.save({"model": predictor.model.state_dict()}, partial)
        os.replace(partial, path)
    return path


# ============================================================================= the parent
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="volume sides")
    parser.add_argument(
        "--sections", nargs="+", default=["volumes"], help="what to run: volumes (default), clicks, pores (see above)"
    )
    parser.add_argument(
        "--folder", default="/tmp/rwth-sam-scale", help="where the volumes, the checkpoint and the labels go"
    )
    parser.add_argument("--json", default=str(RESULTS / "scale.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "scale.md"))
    parser.add_argument(
        "--merge", action="store_true", help="keep the earlier results file's rows of the sizes not run now"
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=60.0, help="skip a size whose estimated time would pass this"
    )
    parser.add_argument(
        "--memory-cap-gb", type=float, default=12.0, help="end a size's process this far above its baseline"
    )
    parser.add_argument(
        "--min-available-gb",
        type=float,
        default=3.0,
        help="... or when the machine has this left and the case is above the goal",
    )
    parser.add_argument(
        "--labels-on-disk-above", type=float, default=None, help="the widget's setting in GB (default: its own)"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations (slower): the traced peak per step, the top sites if a size is stopped",
    )
    parser.add_argument("--rebuild", action="store_true", help="only write the tables again from --json")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of the 'clicks' section (every size once a round; default 2)"
    )
    parser.add_argument(
        "--range-slices", type=int, default=RANGE_SLICES, help=f"the 3D range's slices (default {RANGE_SLICES})"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: one size's case
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_case(json.loads(args.child))
    sys.path.insert(0, str(HERE))
    import torch

    from harness import machine_info, utc_now

    if args.rebuild:
        return rebuild(args)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    context = {
        "args": args, "folder": folder, "started": utc_now(), "clock": time.monotonic(),
        "machine": machine_info(torch.device("cpu"), ["rwth-sam", "napari", "PyQt6", "vispy", "torch", "zarr", "numpy"]),
    }  # fmt: skip
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        print(f"scale.py: error: unknown sections {unknown}; known: {list(SECTIONS)}", file=sys.stderr)
        return 2
    from pyvirtualdisplay import Display

    server = Display(visible=False, size=(1600, 1000), color_depth=24, extra_args=["-nolisten", "tcp", "-noreset"])
    server.start()
    context["display"] = server.new_display_var
    data = earlier_sections(args) if args.merge else {}
    try:
        for name in args.sections:
            run, _ = SECTIONS[name]
            data[name] = run(context, lambda partial, name=name: save(context, {**data, name: partial}))
            save(context, data)
    finally:
        server.stop()
    print("\n" + "\n".join(markdown(context, data)))
    return 0


def earlier_sections(args) -> dict:
    """The results file's sections (--merge keeps those not run now)."""
    try:
        return dict(json.loads(Path(args.json).read_text())["sections"])
    except (OSError, KeyError, ValueError):
        return {}


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable), *sys.argv])


def save(context: dict, data: dict) -> None:
    """Write the results files (after every size, so an interrupted run keeps what it measured)."""
    args = context["args"]
    report = {"started": context["started"], "machine": context["machine"], "folder": str(context["folder"]),
              "sections": data}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    from harness import write_report

    write_report(args.json, report)
    context["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    Path(args.markdown).write_text("\n".join(markdown(context, data)) + "\n")


def rebuild(args) -> int:
    """The markdown file again from the JSON one (after a change to the tables; nothing is run)."""
    report = json.loads(Path(args.json).read_text())
    for row in report["sections"].get("volumes", {}).get("rows", {}).values():
        row.setdefault("run", {"started": report.get("started"), "command": report.get("command")})
    context = {**report, "args": args, "command": report.get("command")}
    Path(args.markdown).write_text("\n".join(markdown(context, report["sections"])) + "\n")
    print(f"wrote {args.markdown}")
    return 0


def markdown(context: dict, data: dict) -> list[str]:
    machine = context["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items() if version)
    lines = [
        "# bench/scale.py: volumes of any size (issue 12)",
        "",
        f"Last run {context['started']} (UTC) to {context.get('finished', '?')}: `{context.get('command') or command_line()}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores, {total_memory_gb():.0f} GB memory, "
        f"{machine['platform']}, Python {machine['python']}; {packages}. Load average at the start "
        f"{', '.join(f'{x:.1f}' for x in machine.get('load_average_at_start', ()))}. The machine is shared: "
        "other processes' load makes the timings noisy (each size's load averages are in the JSON).",
        "",
    ]
    for name, section_data in data.items():
        title, section_lines = SECTIONS[name][1](section_data)
        lines += [f"## {title}", "", *section_lines, ""]
    return lines


def total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


# ----------------------------------------------------------------------------- section: volume sizes
def volume_section(context: dict, progress) -> dict:
    """Each size in a process of its own; the volume generated (or reused) first."""
    args, folder = context["args"], context["folder"]
    checkpoint = write_checkpoint(folder)
    rows = earlier_rows(args) if args.merge else {}
    budget_s = args.budget_minutes * 60
    previous = None  # seconds the last size took
    for key in args.sizes:
        shape = SIZES[key]
        print(f"\n== {key}³ ({'×'.join(map(str, shape))} uint16)", flush=True)
        elapsed = time.monotonic() - context["clock"]
        volume = volume_state(volume_path(folder, shape), shape)
        estimate = 0.0 if volume and volume.get("complete") else raw_bytes(shape) / (60 * MB)  # generation
        if previous is not None:
            estimate += previous * 1.25  # the model's work is the same at every size; reading slices grows
        skipped = None
        if elapsed + estimate > budget_s:
            skipped = (
                f"estimated {estimate / 60:.0f} min (generating the volume and the steps), over what is left of the "
                f"{args.budget_minutes:.0f} min budget ({(budget_s - elapsed) / 60:.0f} min)"
            )
        else:
            volume = ensure_volume(folder, shape)
            skipped = volume.get("skipped")
        if skipped:
            if key in rows and "skipped" not in rows[key]:  # --merge: what an earlier run measured stays
                print(f"  skipped: {skipped}; the earlier run's row is kept", flush=True)
                continue
            rows[key] = {"size": key, "shape": shape, "run": {"started": context["started"]}, "skipped": skipped}
            print(f"  skipped: {skipped}", flush=True)
            continue
        started = time.monotonic()
        rows[key] = {"size": key, "shape": shape, "volume": volume, **run_child(context, key, volume, checkpoint)}
        rows[key]["run"] = {"started": context["started"], "command": command_line()}
        previous = time.monotonic() - started
        progress({"rows": rows})
    return {"rows": rows}


def earlier_rows(args) -> dict:
    """The rows of the results file, each with the run that measured it."""
    try:
        report = json.loads(Path(args.json).read_text())
        rows = dict(report["sections"]["volumes"]["rows"])
    except (OSError, KeyError, ValueError):
        return {}
    for row in rows.values():
        row.setdefault("run", {"started": report.get("started"), "command": report.get("command")})
    return rows


def run_child(context: dict, key: str, volume: dict, checkpoint: Path, clicks_only: bool = False) -> dict:
    args, folder = context["args"], context["folder"]
    work = folder / f"{'clicks' if clicks_only else 'run'}-{key}"  # the labels (in the user data folder), the .tif
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out = work / "case.json"
    case = {
        "size": key, "shape": SIZES[key], "volume": volume["path"], "checkpoint": str(checkpoint), "work": str(work),
        "out": str(out), "memory_cap_gb": args.memory_cap_gb, "min_available_gb": args.min_available_gb,
        "labels_on_disk_above": args.labels_on_disk_above, "tracemalloc": args.tracemalloc,
        "range_slices": args.range_slices, "clicks_only": clicks_only,
    }  # fmt: skip
    env = {**os.environ, "DISPLAY": context["display"], "XDG_DATA_HOME": str(work / "user-data")}
    env.pop("QT_QPA_PLATFORM", None)
    load_before = os.getloadavg()
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], env=env)
    result = {"seconds": time.monotonic() - started, "returncode": done.returncode}
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    try:
        result.update(json.loads(out.read_text()))
    except (OSError, ValueError) as error:
        result["error"] = f"the case's process ended with code {done.returncode} and left no report ({error})"
    labels = work / "user-data"
    result["labels_on_disk_gb"] = stored_bytes(labels) / GB if labels.exists() else 0.0
    return result


# ----------------------------------------------------------------------------- the section's report
STEPS_AFTER_BASELINE = [
    "10 further clicks", "new labels layer", "submit", "3D: set the range (embedding it ahead)",
    "3D: box, segment the middle slice", "3D: full segmentation", "save the labels (.tif)",
]  # fmt: skip


def volume_report(data: dict) -> tuple[str, list[str]]:
    rows = data["rows"]
    order = [key for key in SIZES if key in rows]
    reference = rows.get("256", {}).get("clicks", {}).get("median_ms")
    lines = [
        "SAM 2.1-t (random weights, CPU), a uint16 zarr volume opened lazily (`viewer.add_image(zarr_array)`), "
        f"chunks {'×'.join(map(str, CHUNKS))}; each size in a process of its own. Baseline: resident memory once the "
        "first click's preview is shown (napari, the widget, the loaded model, one slice embedded). Goals: peak above "
        f"the baseline ≤ {GOAL_MEMORY_GB} GB, click median within {GOAL_LATENCY_RATIO - 1:.0%} of 256³.",
        "",
        "| volume | labels | open | first click | click median (min–max) | vs 256³ | model share | 3D embed ahead | "
        "3D full | save | baseline | peak above baseline (step) | goals |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for key in order:
        row = rows[key]
        name = f"{key}³"
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |" + " |" * 11)
            continue
        steps = row.get("steps", {})
        clicks = row.get("clicks", {})
        median = clicks.get("median_ms")
        ratio = median / reference if median and reference else None
        peak = peak_above_baseline(row)
        memory_ok = peak is not None and peak[0] <= GOAL_MEMORY_GB * GB and "aborted" not in row
        latency_ok = ratio is not None and ratio <= GOAL_LATENCY_RATIO
        goals = f"memory {'yes' if memory_ok else '**no**'}, latency {'yes' if latency_ok else '**no**'}"
        lines.append(
            f"| {name} | {row.get('labels_kind', '—')} | {seconds(steps, 'open')} | "
            f"{seconds(steps, 'first click (model load, embedding)')} | "
            + (f"{median:.0f} ms ({clicks['min_ms']:.0f}–{clicks['max_ms']:.0f})" if median else "—")
            + f" | {f'{ratio:.2f}' if ratio else '—'} | "
            + (f"{clicks['model_median_ms']:.0f} ms" if clicks.get("model_median_ms") else "—")
            + f" | {seconds(steps, '3D: set the range (embedding it ahead)')} | {seconds(steps, '3D: full segmentation')} | "
            f"{seconds(steps, 'save the labels (.tif)')} | "
            + (f"{row['baseline_rss'] / GB:.2f} GB" if row.get("baseline_rss") else "—")
            + " | "
            + (f"{peak[0] / GB:.2f} GB ({peak[1]})" if peak else "—")
            + f" | {goals} |"
        )
        if row.get("aborted"):
            aborted = row["aborted"]
            notes.append(f"* **{name}: stopped in '{aborted['step']}'**: {aborted['reason']}. Python stacks then:")
            notes += ["", "  ```", *[f"  {line}" for line in aborted["stacks"].strip().splitlines()], "  ```", ""]
        for step, info in steps.items():
            if info.get("error"):
                notes.append(f"* {name}, '{step}' failed: {info['error']}")
                if info.get("traceback"):
                    notes += ["", "  ```", *[f"  {line}" for line in info["traceback"].strip().splitlines()[-12:]]]
                    notes += ["  ```", ""]
        if row.get("error"):
            notes.append(f"* {name}: {row['error']}")
        for line in row.get("notes", []):
            notes.append(f"* {name}: {line}")
        notes += [f"* {name}: {line}" for line in per_voxel(row)]
    lines += [
        "",
        "(open, first click, 3D and save in seconds; the model share is the worker's `predict` of a click. *vs 256³* "
        "compares processes run minutes apart under other load: judge the latency goal by the interleaved rounds of "
        "the *Click latency* section where there is one.)",
    ]
    lines += ["", *step_table(rows, order)]
    runs = {}
    for key in order:
        run = rows[key].get("run") or {}
        runs.setdefault((run.get("started"), run.get("command")), []).append(f"{key}³")
    lines += ["", "Measured by: " + "; ".join(
        f"{', '.join(sizes)}: `{command or 'python bench/scale.py'}`, started {started} (UTC)"
        for (started, command), sizes in runs.items()
    ) + "."]  # fmt: skip
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "Volume sizes: 256³ to 2048³", lines


def per_voxel(row: dict) -> list[str]:
    """What a write into the labels cost per voxel written (submit, propagation): it follows the voxels, not
    the volume, as long as it is not a whole-volume pass."""
    import re

    written = {
        "submit": r"Submitted (\d+) pixels",
        "3D: full segmentation": r"Propagation done: \d+ slices \((\d+) voxels",
    }
    lines = []
    for step, pattern in written.items():
        info = row.get("steps", {}).get(step)
        found = [re.search(pattern, note) for note in row.get("notes", [])]
        count = next((int(match.group(1)) for match in found if match), 0)
        if info is None or not count or "rss_before" not in info:
            continue
        grown = info["peak_rss"] - info["rss_before"]
        lines.append(
            f"{step}: {count / 1e6:.1f} M voxels written; peak {grown / MB:+.0f} MB above the step's start "
            f"(the model's work included; {grown / count:.0f} B a voxel), longest GUI stall {info['gui_stall_ms'] / 1000:.1f} s "
            f"({info['gui_stall_ms'] * 1000 / count:.2f} µs a voxel)"
        )
    return lines


def seconds(steps: dict, name: str) -> str:
    info = steps.get(name)
    if info is None:
        return "—"
    return f"{info['seconds']:.1f}" + (" ✗" if info.get("error") else "")


def peak_above_baseline(row: dict) -> tuple[int, str] | None:
    baseline = row.get("baseline_rss")
    peaks = [(info["peak_rss"] - baseline, step) for step, info in row.get("steps", {}).items()
             if baseline and step in STEPS_AFTER_BASELINE and info.get("peak_rss")]  # fmt: skip
    if row.get("aborted") and baseline:
        peaks.append((row["aborted"]["rss"] - baseline, row["aborted"]["step"] + ", stopped"))
    return max(peaks) if peaks else None


def step_table(rows: dict, order: list[str]) -> list[str]:
    """Per step and size: peak above the baseline (before it: above the step's start) / retained after the
    step, both in MB; wall time; the longest GUI-thread stall."""
    keys = [key for key in order if "steps" in rows[key]]
    if not keys:
        return []
    names = []
    for key in keys:
        names += [name for name in rows[key]["steps"] if name not in names]
    lines = [
        "Per step: peak resident memory above the baseline (for the steps before it: above the step's start) / "
        "resident after the step above the baseline, in MB; wall time; the longest stall of the GUI thread "
        f"(a {HEARTBEAT_MS} ms heartbeat timer; steps run from the GUI thread stall it for their whole length).",
        "",
        "| step | " + " | ".join(f"{key}³" for key in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name in names:
        cells = []
        for key in keys:
            row, info = rows[key], rows[key]["steps"].get(name)
            if info is None:
                cells.append("—")
                continue
            baseline = row.get("baseline_rss") if name in STEPS_AFTER_BASELINE else info["rss_before"]
            peak = (info["peak_rss"] - baseline) / MB if baseline else float("nan")
            after = (info["rss_after"] - row["baseline_rss"]) / MB if row.get("baseline_rss") else float("nan")
            retained = f" / {after:+.0f}" if name in STEPS_AFTER_BASELINE else ""
            cells.append(
                f"{peak:+.0f}{retained} MB; {info['seconds']:.1f} s; stall {info['gui_stall_ms']:.0f} ms"
                + (" ✗" if info.get("error") else "")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- section: clicks, interleaved
def clicks_section(context: dict, progress) -> dict:
    """Open, first click and the 10 clicks only, each size once a round (the volumes made before)."""
    args, folder = context["args"], context["folder"]
    checkpoint = write_checkpoint(folder)
    rounds = []
    for number in range(args.rounds):
        this = {}
        rounds.append(this)
        for key in args.sizes:
            shape = SIZES[key]
            state = volume_state(volume_path(folder, shape), shape)
            if not (state and state.get("complete")):
                print(f"\n== clicks, round {number + 1}, {key}³: no volume (run the volumes section first)")
                continue
            print(f"\n== clicks, round {number + 1}, {key}³", flush=True)
            volume = {"path": str(volume_path(folder, shape))}
            result = run_child(context, key, volume, checkpoint, clicks_only=True)
            this[key] = {"clicks": result.get("clicks"), "load_average": result["load_average"],
                         "error": result.get("error") or result.get("stopped_after")}  # fmt: skip
            progress({"rounds": rounds, "run": {"started": context["started"], "command": command_line()}})
    return {"rounds": rounds, "run": {"started": context["started"], "command": command_line()}}


def clicks_report(data: dict) -> tuple[str, list[str]]:
    rounds = data["rounds"]
    keys = [key for key in SIZES if any(key in r for r in rounds)]
    lines = [
        f"The 10 clicks again (a fresh process per size and round, as above, stopping after the clicks), every size "
        f"once in each of {len(rounds)} rounds: per round the median latency, as model (the worker's `predict`) + "
        "the rest (the GUI thread: the runner's hand-over, the preview layer's refresh), and its ratio to the 256³ "
        f"median of the same round. Goal: within {GOAL_LATENCY_RATIO - 1:.0%} of 256³; met when the median of the "
        "rounds' ratios is (single rounds swing with the load of other processes).",
        "",
        "| volume | "
        + " | ".join(f"round {i + 1}" for i in range(len(rounds)))
        + " | ratio to 256³ per round | median | met |",
        "|---|" + "---:|" * len(rounds) + "---|---:|---|",
    ]
    for key in keys:
        cells, ratios = [], []
        for r in rounds:
            clicks = (r.get(key) or {}).get("clicks")
            reference = ((r.get("256") or {}).get("clicks") or {}).get("median_ms")
            if not clicks:
                cells.append("—")
                continue
            rest = statistics.median(a - b for a, b in zip(clicks["latencies_ms"], clicks["model_ms"]))
            load = r[key]["load_average"]["before"][0]
            cells.append(
                f"{clicks['median_ms']:.0f} ms ({clicks['model_median_ms']:.0f} + {rest:.0f}), load {load:.1f}"
            )
            if reference:
                ratios.append(clicks["median_ms"] / reference)
        median = statistics.median(ratios) if ratios else None
        met = "—" if median is None else "yes" if median <= GOAL_LATENCY_RATIO else "**no**"
        lines.append(
            f"| {key}³ | "
            + " | ".join(cells)
            + f" | {', '.join(f'{x:.2f}' for x in ratios) or '—'} | "
            + (f"{median:.2f}" if median else "—")
            + f" | {met} |"
        )
    run = data.get("run") or {}
    lines += ["", f"Measured by `{run.get('command')}`, started {run.get('started')} (UTC); load: the 1-minute load "
              "average when the size's process started."]  # fmt: skip
    return "Click latency, sizes interleaved", lines


# ----------------------------------------------------------------------------- section: pores at native resolution
PORE_SLICE, PORE_DIAMETER, PORE_COUNT = 2048, 8, 24
MODEL_INPUT, LOW_RES = 1024, 256  # SAM 2.1's input side and the side of its mask logits
PORE_PRECISION, PORE_RECALL = 0.9, 0.5  # a pore counts when its mask lies in it (1 px tolerance) and covers half


def pore_slice(seed: int = 3):
    """A 2048² slice of the battery phantom with PORE_COUNT round pores 8 pixels across in the electrode
    roll, at least 64 pixels apart: the image and the pores' labels (1…PORE_COUNT)."""
    import numpy as np

    from rwth_sam.core.phantom import ANODE, CATHODE, battery_phantom

    image, labels = battery_phantom((1, PORE_SLICE, PORE_SLICE), seed=seed)
    image, labels = image[0].copy(), labels[0]
    truth = np.zeros(labels.shape, np.int32)
    rng = np.random.default_rng(seed)
    offsets = np.mgrid[-PORE_DIAMETER : PORE_DIAMETER + 1, -PORE_DIAMETER : PORE_DIAMETER + 1]
    disk = np.hypot(*(offsets + 0.5)) <= PORE_DIAMETER / 2  # 8 pixels across, centred between pixels
    centres: list[tuple[int, int]] = []
    while len(centres) < PORE_COUNT:
        row, col = (int(v) for v in rng.integers(256, PORE_SLICE - 256, 2))
        if labels[row, col] not in (CATHODE, ANODE) or any(np.hypot(row - r, col - c) < 64 for r, c in centres):
            continue
        rows, cols = offsets[0][disk] + row, offsets[1][disk] + col
        truth[rows, cols] = len(centres) + 1
        image[rows, cols] = np.clip(rng.normal(25, 12, rows.size), 0, 255).astype(np.uint8)  # the phantom's pore
        centres.append((row, col))
    return image, truth, centres


def best_mask_on_the_model_grid(pore):
    """The best mask SAM's geometry allows for ``pore`` (a square region's truth, side dividing into the
    256 logits): the truth averaged over each logit's pixels, thresholded, and brought back to the region
    by bilinear upsampling as upstream does. It tells what the resolution alone permits, whatever the weights."""
    import numpy as np
    from skimage.transform import downscale_local_mean, resize

    factor = pore.shape[0] // LOW_RES
    logits = downscale_local_mean(pore.astype(np.float32), (factor, factor)) - 0.5
    return resize(logits, pore.shape, order=1, mode="edge", anti_aliasing=False) > 0


def pore_found(mask, pore) -> bool:
    from scipy import ndimage

    if not mask.any():
        return False
    inside = (mask & ndimage.binary_dilation(pore)).sum() / mask.sum()
    return inside >= PORE_PRECISION and (mask & pore).sum() / pore.sum() >= PORE_RECALL


def pores_section(context: dict, progress) -> dict:
    """Each pore prompted with a point at its centre, on the whole 2048² slice and in the native region
    the widget's *Region around the box* takes around an 8-pixel box on it: the geometric bound, and SAM
    2.1-t with this run's random weights."""
    import rwth_sam
    from rwth_sam.core.coordinates import SlicePlane
    from rwth_sam.ui.widget import BOX_REGION_MARGIN, BOX_REGION_MIN

    image, truth, centres = pore_slice()
    predictor = rwth_sam.load_model(MODEL, checkpoint=str(write_checkpoint(context["folder"])), device="cpu")
    segmenter = rwth_sam.Segmenter(predictor, image)
    whole = SlicePlane.of(image.shape)
    half = PORE_DIAMETER / 2
    rows = {"whole slice": {"bound": 0, "model": 0}, "native region": {"bound": 0, "model": 0}}
    started = time.perf_counter()
    for number, (row, col) in enumerate(centres, start=1):
        x, y = col - 0.5, row - 0.5  # the pore's centre, between its middle pixels
        region = whole.square_around((x - half, y - half, x + half, y + half), BOX_REGION_MARGIN, BOX_REGION_MIN)
        for name, plane in (("whole slice", whole), ("native region", region)):
            row0, col0 = plane.offset
            pore = plane.take(truth) == number
            bound = best_mask_on_the_model_grid(pore)
            mask = segmenter.predict(plane, points=[(x - col0, y - row0)], labels=[1], multimask=False).mask
            rows[name]["bound"] += int(pore_found(bound, pore))
            rows[name]["model"] += int(pore_found(mask, pore))
        print(f"  pore {number}/{len(centres)}: {rows}", flush=True)
    return {
        "rows": rows, "pores": len(centres), "diameter": PORE_DIAMETER, "slice": PORE_SLICE,
        "region": region.size[0], "seconds": time.perf_counter() - started,
        "run": {"started": context["started"], "command": command_line()},
    }  # fmt: skip


def pores_report(data: dict) -> tuple[str, list[str]]:
    side, region, pores = data["slice"], data["region"], data["pores"]
    lines = [
        f"A {side}² slice of the phantom with {pores} round pores {data['diameter']} pixels across in the electrode "
        "roll; each prompted with one point at its centre, as the whole slice (the model sees it at "
        f"{MODEL_INPUT / side:.2f}×, a mask logit covers {side // LOW_RES} pixels) and in the {region}² native region "
        f"that *Region around the box* takes around an {data['diameter']}-pixel box ({MODEL_INPUT / region:.0f}×, a "
        f"logit covers {region // LOW_RES} pixel). A pore counts as segmented when at least {PORE_PRECISION:.0%} of "
        f"its mask lies inside the pore (1 pixel tolerance) and the mask covers at least {PORE_RECALL:.0%} of it.",
        "",
        "| embedding | pores segmented: geometric bound | SAM 2.1-t, random weights |",
        "|---|---:|---:|",
    ]
    for name, counts in data["rows"].items():
        lines.append(f"| {name} | {counts['bound']} of {pores} | {counts['model']} of {pores} |")
    lines += [
        "",
        "*Geometric bound*: the best mask SAM's own grid allows (the pore averaged over each mask logit, "
        "thresholded, upsampled bilinearly back as upstream does), whatever the weights. With random weights "
        "the model's column says nothing about quality (trained weights cannot be downloaded here); it shows "
        "that the same prompts run through the model in both embeddings.",
        "",
        f"Measured by `{data['run']['command']}`, started {data['run']['started']} (UTC), {data['seconds']:.0f} s.",
    ]
    return "Pores at native resolution", lines


SECTIONS = {  # name: (run it, report its data)
    "volumes": (volume_section, volume_report),
    "clicks": (clicks_section, clicks_report),
    "pores": (pores_section, pores_report),
}


# ============================================================================= the child (one size)
def read_status() -> dict:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


class Memory:
    """Resident memory: exact peaks per step (the kernel's high-water mark, reset before each step), and
    a watchdog thread that ends the process, with every thread's stack, before the machine runs out."""

    PERIOD_S = 0.01

    def __init__(self, cap: float, min_available: float, on_abort):
        self.cap, self.min_available, self.on_abort = cap, min_available, on_abort
        self.start_rss = read_status()["VmRSS"]
        self.baseline: int | None = None
        self.step = "start"
        self.sampled_peak = 0
        self.can_reset = True
        self.short: list[str] = []  # when the machine was short of memory (others' processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory watchdog", daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return read_status()["VmRSS"]

    def reset_peak(self) -> None:
        self.sampled_peak = 0
        if self.can_reset:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current VmRSS
            except OSError:
                self.can_reset = False

    def peak(self) -> int:
        return read_status()["VmHWM"] if self.can_reset else self.sampled_peak

    def limit(self) -> int:
        reference = self.baseline if self.baseline is not None else self.start_rss + 2 * GB  # napari, the model
        return int(reference + self.cap)

    def _watch(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as statm:
            while not self._stop.wait(self.PERIOD_S):
                statm.seek(0)
                rss = int(statm.read().split()[1]) * page
                self.sampled_peak = max(self.sampled_peak, rss)
                reason = None
                if rss > self.limit():
                    reason = f"resident memory {rss / GB:.2f} GB passed the cap of {self.limit() / GB:.2f} GB"
                elif available_bytes() < self.min_available:
                    # the machine is short: this process's doing only if it grew past the goal (others'
                    # processes share the machine; ending this one for their memory would measure nothing)
                    grown = rss - (self.baseline if self.baseline is not None else self.start_rss + 2 * GB)
                    if grown > GOAL_MEMORY_GB * GB:
                        reason = (
                            f"the machine had less than {self.min_available / GB:.1f} GB available, this process "
                            f"{rss / GB:.2f} GB ({grown / GB:.2f} GB above its baseline)"
                        )
                    elif not self.short:
                        self.short.append(f"{self.step}: the machine had less than {self.min_available / GB:.1f} "
                                          f"GB available (this process {rss / GB:.2f} GB)")  # fmt: skip
                if reason:
                    self.on_abort(self.step, rss, reason)
                    return


def thread_stacks() -> str:
    """Every thread's Python stack, as faulthandler writes it (it needs no GIL-free moment of the others)."""
    import faulthandler
    import tempfile

    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read()


class Case:
    """One size: napari, the widget and the steps, driven from the GUI thread as the tests drive it."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.report = {"steps": {}, "notes": []}
        self.heartbeat_ticks: list[float] = []
        self.predicted_at: list[float] = []
        self.model_seconds: list[float] = []
        self.lock = threading.Lock()
        self.memory = Memory(spec["memory_cap_gb"] * GB, spec["min_available_gb"] * GB, self.abort)

    # -- the report
    def write(self) -> None:
        with self.lock:
            Path(self.spec["out"]).write_text(json.dumps(self.report, default=str))

    def abort(self, step: str, rss: int, reason: str) -> None:
        """From the watchdog: record where it happened and end the process (nothing else can stop a numpy call)."""
        entry = {"step": step, "rss": rss, "reason": reason, "stacks": thread_stacks()}
        if self.spec["tracemalloc"]:
            entry["tracemalloc"] = top_allocations()
        self.report["aborted"] = entry
        print(f"  ABORTED in '{step}': {reason}", flush=True)
        print(entry["stacks"], flush=True)
        self.write()
        os._exit(3)

    @contextmanager
    def step(self, name: str, critical: bool = True):
        import gc

        gc.collect()
        self.settle(0.3)
        info = {"rss_before": self.memory.rss()}
        self.memory.step = name
        self.memory.reset_peak()
        if self.spec["tracemalloc"]:
            import tracemalloc

            tracemalloc.reset_peak()
        start = time.perf_counter()
        failed = None
        try:
            yield info
        except Exception as error:  # noqa: BLE001  (recorded; critical ones end the case)
            failed = error
            info["error"] = f"{type(error).__name__}: {error}"
            info["traceback"] = traceback.format_exc()
        info["seconds"] = time.perf_counter() - start
        info["peak_rss"] = self.memory.peak()
        self.settle(0.3)  # the GUI's answer (layer refresh, redraw)
        info["peak_rss"] = max(info["peak_rss"], self.memory.peak())
        info["rss_after"] = self.memory.rss()
        info["gui_stall_ms"] = self.longest_stall(start, time.perf_counter())
        if self.spec["tracemalloc"]:
            import tracemalloc

            info["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / MB
        with self.lock:
            self.report["steps"][name] = info
        baseline = self.memory.baseline
        above = f", peak {(info['peak_rss'] - (baseline or info['rss_before'])) / MB:+.0f} MB"
        print(
            f"  {name:40s} {info['seconds']:7.1f} s{above} (above {'baseline' if baseline else 'its start'}), "
            f"RSS after {info['rss_after'] / GB:.2f} GB, GUI stall {info['gui_stall_ms']:.0f} ms"
            + (f"  FAILED: {info['error']}" if failed else ""),
            flush=True,
        )
        self.write()
        if failed is not None and critical:
            raise StepFailed(name) from failed

    def longest_stall(self, start: float, end: float) -> float:
        ticks = [t for t in self.heartbeat_ticks if start - 1 <= t <= end + 1]
        gaps = [(b - a) * 1000 - HEARTBEAT_MS for a, b in zip(ticks, ticks[1:]) if b >= start and a <= end]
        return max(gaps, default=float("nan"))

    # -- waiting on the GUI thread
    def settle(self, seconds: float) -> None:
        self.wait_until(lambda: False, "", seconds, quiet=True)

    def wait_until(self, condition, what: str, timeout: float, quiet: bool = False) -> None:
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        deadline = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > deadline:
                if quiet:
                    return
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            app.processEvents()
            time.sleep(0.002)

    def wait_idle(self, timeout: float = 1800) -> None:
        self.wait_until(lambda: not self.widget.runner.busy, "the model's work to end", timeout)

    # -- input through napari's canvas (as tests/napari_helpers.py)
    def canvas_position(self, data_point):
        canvas = self.viewer.window._qt_viewer.canvas
        view = canvas.view
        row_axis, col_axis = self.viewer.dims.displayed
        world = self.image.data_to_world(data_point)
        transform = view.transform * view.scene.transform
        return tuple(transform.map([world[col_axis], world[row_axis]])[:2])

    def canvas_events(self):
        return self.viewer.window._qt_viewer.canvas._scene_canvas.events

    def middle_click(self, data_point, *modifiers) -> None:
        events, position = self.canvas_events(), self.canvas_position(data_point)
        press = events.mouse_press(pos=position, button=3, modifiers=modifiers)
        events.mouse_release(pos=position, button=3, modifiers=modifiers, press_event=press)

    def middle_drag(self, start, end, *modifiers) -> None:
        events = self.canvas_events()
        begin, finish = self.canvas_position(start), self.canvas_position(end)
        press = events.mouse_press(pos=begin, button=3, modifiers=modifiers)
        for t in (0.5, 1.0):
            position = tuple(b + t * (f - b) for b, f in zip(begin, finish))
            events.mouse_move(pos=position, button=3, buttons=[3], modifiers=modifiers, press_event=press)
        events.mouse_release(pos=finish, button=3, modifiers=modifiers, press_event=press)

    def click_and_wait(self, data_point, negative: bool = False) -> float:
        """A middle click; returns the seconds until its preview is in the preview layer."""
        from vispy.util import keys

        seen = len(self.predicted_at)
        start = time.perf_counter()
        self.middle_click(data_point, *((keys.CONTROL,) if negative else ()))
        self.wait_until(lambda: len(self.predicted_at) > seen, "the click's preview", 900)
        latency = self.predicted_at[-1] - start
        self.wait_idle()
        if self.widget.prompts.prediction is None:
            raise RuntimeError(f"no preview after the click: {self.widget.status.value}")
        return latency

    # -- the steps
    def run(self) -> None:
        spec = self.spec
        from rwth_sam.core.models.builtin import import_upstream_packages

        import_upstream_packages()  # as python -m rwth_sam does, before napari
        if spec["tracemalloc"]:
            import tracemalloc

            tracemalloc.start(10)
        import napari
        import zarr
        from qtpy.QtCore import Qt, QTimer

        self.report["after_imports_rss"] = self.memory.rss()
        self.viewer = viewer = napari.Viewer()
        viewer.window._qt_window.setGeometry(0, 0, 1600, 1000)
        heartbeat = QTimer(timerType=Qt.TimerType.PreciseTimer, interval=HEARTBEAT_MS)
        heartbeat.timeout.connect(lambda: self.heartbeat_ticks.append(time.perf_counter()))
        heartbeat.start()
        self.settle(1.0)
        self.report["viewer_rss"] = self.memory.rss()
        depth, height, width = spec["shape"]
        middle = depth // 2
        try:
            self.steps(napari, zarr, depth, height, width, middle)
        except StepFailed as failed:
            self.report["stopped_after"] = str(failed)
        self.report["final_rss"] = self.memory.rss()
        self.report["notes"] += self.memory.short
        self.write()
        viewer.close()

    def steps(self, napari, zarr, depth, height, width, middle) -> None:
        spec, viewer = self.spec, self.viewer
        from rwth_sam.ui.widget import CLICK_MODE, VOLUME_MODE

        with self.step("open"):
            self.image = viewer.add_image(zarr.open_array(spec["volume"], mode="r"), name="phantom")
            viewer.dims.set_point(0, middle)
            self.settle(0.5)
        self.report["contrast_limits"] = list(map(float, self.image.contrast_limits))

        with self.step("dock the widget"):
            _, self.widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
            widget = self.widget
            widget.model.value, widget.checkpoint.value, widget.device.value = MODEL, spec["checkpoint"], "cpu"
            if spec["labels_on_disk_above"] is not None:
                widget.labels_on_disk_above.value = spec["labels_on_disk_above"]
        self.report["labels_on_disk_above_gb"] = widget.labels_on_disk_above.value
        widget.prompts.predicted.connect(lambda _prediction: self.predicted_at.append(time.perf_counter()))
        self.time_the_model()

        with self.step("first click (model load, embedding)"):
            self.report["first_click_ms"] = 1000 * self.click_and_wait((middle, height * 0.5, width * 0.8))
        self.settle(1.0)
        self.memory.baseline = self.report["baseline_rss"] = self.memory.rss()
        self.report["torch_threads"] = __import__("torch").get_num_threads()

        latencies = []
        with self.step("10 further clicks"):
            before = len(self.model_seconds)
            for i in range(CLICKS):
                point = (middle, height * (0.3 + 0.04 * i), width * (0.25 + 0.05 * i))
                latencies.append(1000 * self.click_and_wait(point, negative=i % 3 == 2))
            model_ms = [1000 * s for s in self.model_seconds[before:]]
        self.report["clicks"] = {
            "latencies_ms": latencies, "median_ms": statistics.median(latencies), "min_ms": min(latencies),
            "max_ms": max(latencies), "model_ms": model_ms,
            "model_median_ms": statistics.median(model_ms) if model_ms else None,
        }  # fmt: skip
        if spec.get("clicks_only"):
            return

        with self.step("new labels layer"):
            widget.new_labels.clicked.emit()
            labels = widget.labels_picker.value
            if labels is None:
                raise RuntimeError(f"no labels layer: {widget.status.value}")
        self.report["labels_kind"] = "zarr on disk" if isinstance(labels.data, zarr.Array) else "in memory"
        self.report["labels_status"] = widget.status.value

        with self.step("submit"):
            widget.submit_button.clicked.emit()
            if "Submitted" not in widget.status.value:
                raise RuntimeError(f"the submit did not happen: {widget.status.value}")
        self.report["notes"].append(f"submit: {widget.status.value}")

        panel = widget.volume
        slices = spec["range_slices"]
        start, end = middle - slices // 2, middle - slices // 2 + slices - 1
        with self.step("3D: set the range (embedding it ahead)"):
            widget.mode.value = VOLUME_MODE
            viewer.dims.set_point(0, start)
            panel.set_start.clicked.emit()
            viewer.dims.set_point(0, end)
            panel.set_end.clicked.emit()
            self.wait_idle()
        self.report["range"] = panel.range_label.value
        self.report["notes"].append(f"3D range: {panel.range_label.value}")
        centre = (start + end) // 2
        row0, col0 = (height // 2 // TILE[1]) * TILE[1], (width // 2 // TILE[2]) * TILE[2]
        row0, col0 = min(row0, height - TILE[1]), min(col0, width - TILE[2])
        with self.step("3D: box, segment the middle slice"):
            from vispy.util import keys

            self.middle_drag((centre, row0 + 16, col0 + 16), (centre, row0 + 240, col0 + 240), keys.SHIFT)
            panel.add_box.clicked.emit()
            if len(panel.session.objects) != 1:
                raise RuntimeError(f"the box was not added: {widget.status.value}")
            panel.segment_middle.clicked.emit()
            self.wait_idle()
            if not panel.session.conditioning:
                raise RuntimeError(f"the middle slice was not segmented: {widget.status.value}")
        with self.step("3D: full segmentation", critical=False):
            panel.full.clicked.emit()
            self.wait_idle()
            if "Propagation done" not in widget.status.value:
                raise RuntimeError(f"the propagation did not finish: {widget.status.value}")
        self.report["notes"].append(f"3D: {widget.status.value}")
        widget.mode.value = CLICK_MODE

        path = Path(spec["work"]) / "labels.tif"
        with self.step("save the labels (.tif)", critical=False):
            widget.save_labels_as(path)  # in a worker: the step lasts until it is written
            self.wait_idle()
            if not widget.status.value.startswith("Saved"):
                raise RuntimeError(f"the labels were not saved: {widget.status.value}")
        if path.is_file():
            self.report["saved_mb"] = path.stat().st_size / MB

    def time_the_model(self) -> None:
        """The worker's share of a click: the model's ``predict``, timed where the widget's job calls it."""
        from rwth_sam.core.tasks import prompt_session

        request = getattr(prompt_session, "PredictionRequest", None)
        if request is None or not hasattr(request, "predict"):
            self.report["notes"].append("the model's share of a click is not timed (no PredictionRequest.predict)")
            return
        predict = request.predict
        times = self.model_seconds

        def timed(self_, segmenter):
            start = time.perf_counter()
            try:
                return predict(self_, segmenter)
            finally:
                times.append(time.perf_counter() - start)

        request.predict = timed


class StepFailed(Exception):
    pass


def top_allocations(limit: int = 10) -> list[str]:
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    stats = tracemalloc.take_snapshot().statistics("traceback")[:limit]
    return [f"{stat.size / MB:.0f} MB: " + " <- ".join(str(frame) for frame in stat.traceback[:4]) for stat in stats]


def run_case(spec: dict) -> int:
    case = Case(spec)
    try:
        case.run()
    except Exception:  # noqa: BLE001  (reported to the parent)
        case.report["error"] = traceback.format_exc()
        case.write()
        print(case.report["error"], flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
