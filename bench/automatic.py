"""Automatic mask generation: rwth-sam's ``generate_slice`` against the upstream generator it wraps.

On the same module and the same image, this times

* plugin: ``rwth_sam.core.tasks.automatic.generate_slice(predictor, rgb, settings)`` (it builds the
  generator, runs it and paints the label image);
* upstream: the family's own generator (``mobile_sam.SamAutomaticMaskGenerator``,
  ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``, ...), built once outside the timing,
  ``generate(rgb)``, then the same label image painted from its output dicts (largest mask first,
  ids made consecutive), as a user of upstream would.

Goal: plugin / upstream <= 1.05 (median of the timed repeats). The label images must be identical or
the run stops with an AssertionError. Both sides run under ``torch.inference_mode()``, are warmed up
once and alternate repeat by repeat (A B, B A, ...), so load from other processes hits both alike.

Weights are random (the compute, not the quality, is measured): their predicted IoUs and stabilities
are low, so by default the filters are off and box NMS keeps everything (``--set`` changes any
setting), which gives about as many masks to post-process and paint as a trained model's default run.
The image is a slice of the battery phantom scaled to ``--size``.

Run ``python bench/automatic.py --help`` for the options; see bench/README.md for results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from dataclasses import fields, replace

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"(timm|mobile_sam|segment_anything.*|sam2)\b.*")
warnings.filterwarnings("ignore", message=r"Overwriting .* in registry")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rwth_sam  # noqa: E402
from rwth_sam.core.models.device import resolve_device  # noqa: E402
from rwth_sam.core.phantom import battery_phantom  # noqa: E402
from rwth_sam.core.tasks.automatic import AutomaticSettings, generate_slice  # noqa: E402

from harness import interleaved, machine_info, make_timer, write_report  # noqa: E402  (bench/harness.py, beside this script)

GOAL = 1.05
LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def upstream_generator(predictor, settings: AutomaticSettings):
    """The family's own generator class with the same settings, as a user would build it."""
    package = type(predictor.model).__module__.split(".")[0]
    kwargs = {f.name: getattr(settings, f.name) for f in fields(settings)}
    if package == "sam2":
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        generator = SAM2AutomaticMaskGenerator(predictor.model, **kwargs)
        size = predictor.model.image_size
        generator.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        return generator
    module = __import__(f"{package}.automatic_mask_generator", fromlist=["SamAutomaticMaskGenerator"])
    return module.SamAutomaticMaskGenerator(predictor.model, **kwargs)


def paint(annotations, shape) -> np.ndarray:
    """Upstream's output dicts as a label image: largest first (ties in upstream order), ids 1..n."""
    order = sorted(range(len(annotations)), key=lambda i: -annotations[i]["area"])
    labels = np.zeros(shape, np.int32)
    for value, i in enumerate(order, start=1):
        labels[annotations[i]["segmentation"]] = value
    present = np.unique(labels)
    present = present[present != 0]
    lookup = np.zeros(len(annotations) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def bench_model(name: str, rgb: np.ndarray, device: torch.device, settings: AutomaticSettings, repeats: int) -> dict:
    torch.manual_seed(0)
    predictor = rwth_sam.load_model(name, pretrained=False, device=device)
    generator = upstream_generator(predictor, settings)
    timed = make_timer(device)

    def plugin():
        return generate_slice(predictor, rgb, settings)

    def upstream():
        with torch.inference_mode():
            return paint(generator.generate(rgb), rgb.shape[:2])

    ours, theirs = plugin(), upstream()  # warm-up, and the results to compare
    np.testing.assert_array_equal(ours, theirs, err_msg=f"{name}: label images differ")
    plugin_times, upstream_times = interleaved(timed, plugin, upstream, repeats, warm_up=False)
    plugin_median, upstream_median = statistics.median(plugin_times), statistics.median(upstream_times)
    return {
        "model": name,
        "objects": int(ours.max()),
        "plugin_s": plugin_times,
        "upstream_s": upstream_times,
        "plugin_median_s": plugin_median,
        "upstream_median_s": upstream_median,
        "ratio": plugin_median / upstream_median,
        "goal": GOAL,
        "met": plugin_median / upstream_median <= GOAL,
    }


def parse_settings(pairs: list[str], points_per_side: int) -> AutomaticSettings:
    values = dict(LOOSE, points_per_side=points_per_side)
    types = {f.name: f.type for f in fields(AutomaticSettings)}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in types:
            raise SystemExit(f"--set {pair}: unknown setting; choose from {', '.join(types)}")
        values[key] = int(text) if types[key] in ("int", int) else float(text)
    return replace(AutomaticSettings(), **values)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models", default="mobile_sam_vit_t", help="comma-separated registry names (default: mobile_sam_vit_t)"
    )
    parser.add_argument("--sam2", action="store_true", help="also run sam2.1_hiera_tiny")
    parser.add_argument(
        "--points-per-side",
        type=int,
        default=4,
        help="grid of prompts (default: 4, about a minute per model on 2 idle CPU cores; upstream's default is 32)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other AutomaticSettings field (default: pred_iou_thresh=0 stability_score_thresh=0 box_nms_thresh=1)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    parser.add_argument("--size", type=int, default=1024, help="side of the square test image (default: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per side (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own)")
    parser.add_argument("--json", metavar="PATH", help="write all timings and metadata to this JSON file")
    args = parser.parse_args(argv)
    args.model_names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.sam2 and "sam2.1_hiera_tiny" not in args.model_names:
        args.model_names.append("sam2.1_hiera_tiny")
    for n in args.model_names:
        rwth_sam.get_model_spec(n)
    args.settings = parse_settings(args.set, args.points_per_side)
    return args


def test_image(size: int) -> np.ndarray:
    volume, _ = battery_phantom((3, 256, 256))
    scale = -(-size // 256)
    image = np.kron(volume[1], np.ones((scale, scale), np.uint8))[:size, :size]
    return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rgb = test_image(args.size)
    info = machine_info(device, ["rwth-sam", "torch", "numpy", "opencv-python-headless", "sam2"])
    changed = {
        f.name: getattr(args.settings, f.name)
        for f in fields(AutomaticSettings)
        if getattr(args.settings, f.name) != getattr(AutomaticSettings(), f.name)
    }
    where = f"{info.get('gpu', info['cpu'])} ({device}, {info['torch_threads']} torch threads)"
    print(
        f"rwth-sam automatic masks on {where}, "
        f"{args.size}x{args.size} phantom slice, {args.repeats} repeats, settings {changed}"
    )
    load = info.get("load_average_at_start", (0,))[0]
    if device.type == "cpu" and load > (os.cpu_count() or 1) - torch.get_num_threads() + 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: timings will be noisy")
    results = []
    print("| model | objects | plugin median | upstream median | ratio | goal |")
    print("|---|---:|---:|---:|---:|---|")
    for name in args.model_names:
        row = bench_model(name, rgb, device, args.settings, args.repeats)
        results.append(row)
        print(
            f"| {name} | {row['objects']} | {row['plugin_median_s']:.2f} s | {row['upstream_median_s']:.2f} s | "
            f"{row['ratio']:.3f} | <= {GOAL} {'met' if row['met'] else 'MISSED'} |",
            flush=True,
        )
    if args.json:
        write_report(args.json, {
            "settings": {f.name: getattr(args.settings, f.name) for f in fields(AutomaticSettings)},
            "machine": info,
            "results": results,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
