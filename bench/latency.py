"""Latency of rwth-sam against the upstream predictors it wraps, on the same module and the same image.

For each model (random weights: the compute, not the quality, is measured) this times

* encoder: ``predictor.embed(rgb)`` against upstream ``set_image(rgb)`` (goal: ratio <= 1.05);
* prompt: one positive click through ``predictor.predict(embedding, Prompts.make(...)).mask`` against
  upstream ``predict(point_coords, point_labels)`` with its default ``multimask_output=True`` and the
  best-scoring mask picked, as upstream's demo does (goal: ratio <= 0.6);
* refine: the same click plus the previous low-resolution logits, single mask, on both sides
  (parity: ratio <= 1.05, this benchmark's own bar).

Both sides run under ``torch.inference_mode()``, are warmed up once, and alternate repeat by repeat
(A B B A A B ...) so that load from other processes hits both alike; CUDA is synchronised around every
timed call. Masks (and low-resolution logits and scores) must be identical on both sides, or the run
stops with an AssertionError: the comparison is of the same computation.

Run ``python bench/latency.py --help`` for the options; see bench/README.md for results.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings

# Upstream packages register timm models twice and warn about deprecated imports: noise, not news.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"(timm|mobile_sam|segment_anything.*|sam2)\b.*")
warnings.filterwarnings("ignore", message=r"Overwriting .* in registry")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rwth_sam  # noqa: E402
from rwth_sam.core.models.device import resolve_device  # noqa: E402

from harness import interleaved, machine_info, make_timer, utc_now, write_report  # noqa: E402  (bench/harness.py, beside this script)

DEFAULT_MODELS = ["mobile_sam_vit_t", "sam2.1_hiera_tiny"]
GOALS = {"encoder": 1.05, "prompt": 0.6, "refine": 1.05}
CASES = {
    "encoder": "embed(rgb) vs set_image(rgb)",
    "prompt": "1 click -> best mask (upstream: 3 masks, multimask_output=True)",
    "refine": "1 click + previous logits -> 1 mask (multimask_output=False)",
}


# ----------------------------------------------------------------------------------------------
# Upstream predictors
# ----------------------------------------------------------------------------------------------


def upstream_predictor(family: str, module: torch.nn.Module):
    """The upstream package's own predictor around the very module rwth-sam wraps."""
    if family == "MobileSAM":
        from mobile_sam import SamPredictor
    elif family == "SAM":
        from segment_anything import SamPredictor
    elif family == "SAM-HQ":
        from segment_anything_hq import SamPredictor
    elif family == "SAM 2.1":
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor = SAM2ImagePredictor(module)
        size = module.image_size
        predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        return predictor
    else:
        raise ValueError(f"No upstream predictor known for the {family} family.")
    return SamPredictor(module)


def upstream_features(family: str, upstream) -> list[torch.Tensor]:
    if family == "SAM 2.1":
        return [upstream._features["image_embed"], *upstream._features["high_res_feats"]]
    features = [upstream.features]
    if family == "SAM-HQ":
        features += list(upstream.interm_features)
    return features


def plugin_features(family: str, predictor, embedding) -> list[torch.Tensor]:
    """rwth-sam's embedding as the decoder gets it (what upstream's predictor holds after set_image)."""
    if family == "SAM 2.1":
        image_embed, high_res = predictor.image_features(embedding)
        return [image_embed, *high_res]
    features = embedding.features
    return [features["image"], *(features.get("interm") or [])]


def share_features(family: str, upstream, predictor, embedding) -> None:
    """Point upstream at rwth-sam's embedding (only needed if the encoder is not deterministic)."""
    features = embedding.features
    if family == "SAM 2.1":
        image_embed, high_res = predictor.image_features(embedding)
        upstream._features = {"image_embed": image_embed, "high_res_feats": high_res}
    else:
        upstream.features = features["image"]
        if family == "SAM-HQ":
            upstream.interm_features = features["interm"]


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def summarise(plugin_times: list[float], upstream_times: list[float], goal: float) -> dict:
    plugin_median = statistics.median(plugin_times)
    upstream_median = statistics.median(upstream_times)
    ratio = plugin_median / upstream_median
    return {
        "plugin_s": plugin_times,
        "upstream_s": upstream_times,
        "plugin_median_s": plugin_median,
        "upstream_median_s": upstream_median,
        "plugin_min_s": min(plugin_times),
        "upstream_min_s": min(upstream_times),
        "ratio": ratio,
        # The median of the pairwise ratios: less sensitive to load that drifts over the run.
        "paired_ratio_median": statistics.median(p / u for p, u in zip(plugin_times, upstream_times)),
        "goal": goal,
        "meets_goal": ratio <= goal,
    }


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------


def bench_model(name: str, rgb: np.ndarray, device: torch.device, args) -> dict:
    spec = rwth_sam.get_model_spec(name)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    predictor = rwth_sam.load_model(name, pretrained=False, device=device)
    build_s = time.perf_counter() - started
    upstream = upstream_predictor(spec.family, predictor.model)
    timed = make_timer(device)
    height, width = rgb.shape[:2]
    x, y = int(width * 0.45), int(height * 0.55)  # whole pixels: exact in float32 and float64 alike
    point_coords = np.array([[x, y]], dtype=np.float64)
    point_labels = np.array([1])
    result = {"model": name, "family": spec.family, "title": spec.title, "build_s": build_s, "point_xy": [x, y]}
    print(f"\n{name} ({spec.title}) on {device}, built in {build_s:.1f} s", flush=True)

    with torch.inference_mode():
        # Encoder.
        holder = {}

        def plugin_embed():
            holder["embedding"] = predictor.embed(rgb)

        def upstream_embed():
            upstream.set_image(rgb)

        plugin_times, upstream_times = interleaved(timed, plugin_embed, upstream_embed, args.encoder_repeats)
        result["encoder"] = summarise(plugin_times, upstream_times, GOALS["encoder"])
        embedding = holder["embedding"]
        upstream_embed()  # the upstream state the prompt runs below use: set from the same image
        same = all(
            a.shape == b.shape and torch.equal(a, b)
            for a, b in zip(
                plugin_features(spec.family, predictor, embedding), upstream_features(spec.family, upstream)
            )
        )
        result["encoder"]["features_identical"] = same
        if not same:
            # Not a difference in what is computed (the same upstream code encodes), but run-to-run
            # non-determinism of some kernel; give both decoders the very same features.
            print("  note: encoder outputs differ run to run; the prompt runs share rwth-sam's features")
            share_features(spec.family, upstream, predictor, embedding)
        print_row("encoder", result["encoder"])

        # One click, ambiguous: rwth-sam decodes 3 candidates and upsamples the best one only.
        def plugin_click():
            return predictor.predict(embedding, rwth_sam.Prompts.make(points=[(x, y)], labels=[1])).mask

        def upstream_click():
            masks, scores, _ = upstream.predict(point_coords=point_coords, point_labels=point_labels)
            return masks[np.argmax(scores)]

        plugin_times, upstream_times = interleaved(timed, plugin_click, upstream_click, args.prompt_repeats)
        result["prompt"] = summarise(plugin_times, upstream_times, GOALS["prompt"])
        prediction = predictor.predict(embedding, rwth_sam.Prompts.make(points=[(x, y)], labels=[1]))
        masks, scores, low_res = upstream.predict(point_coords=point_coords, point_labels=point_labels)
        best = int(np.argmax(scores))
        check_same("prompt", prediction, masks[best], scores[best : best + 1], low_res[best : best + 1])
        result["prompt"]["mask_pixels"] = int(prediction.mask.sum())
        print_row("prompt", result["prompt"])

        # Refinement: the click again with the previous low-resolution logits, one mask.
        previous = low_res[best : best + 1]

        def plugin_refine():
            prompts = rwth_sam.Prompts.make(points=[(x, y)], labels=[1], mask_logits=previous)
            return predictor.predict(embedding, prompts, multimask=False).mask

        def upstream_refine():
            masks, _, _ = upstream.predict(
                point_coords=point_coords, point_labels=point_labels, mask_input=previous, multimask_output=False
            )
            return masks[0]

        plugin_times, upstream_times = interleaved(timed, plugin_refine, upstream_refine, args.prompt_repeats)
        result["refine"] = summarise(plugin_times, upstream_times, GOALS["refine"])
        prediction = predictor.predict(
            embedding, rwth_sam.Prompts.make(points=[(x, y)], labels=[1], mask_logits=previous), multimask=False
        )
        masks, scores, low_res = upstream.predict(
            point_coords=point_coords, point_labels=point_labels, mask_input=previous, multimask_output=False
        )
        check_same("refine", prediction, masks[0], scores, low_res)
        result["refine"]["mask_pixels"] = int(prediction.mask.sum())
        print_row("refine", result["refine"])

    result["masks_identical"] = True
    return result


def release_memory(device: torch.device) -> None:
    """Free the last model before the next is built: its timed closures hold it in reference cycles."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_same(case: str, prediction, upstream_mask, upstream_scores, upstream_low_res) -> None:
    """Both sides must have computed the same thing: identical mask, score and logits."""
    upstream_mask = np.asarray(upstream_mask).astype(bool)  # SAM 2 returns 0/1 floats
    assert prediction.mask.dtype == bool and prediction.mask.shape == upstream_mask.shape, (
        f"{case}: mask {prediction.mask.shape} {prediction.mask.dtype} vs upstream {upstream_mask.shape}"
    )
    differing = int((prediction.mask != upstream_mask).sum())
    hint = ""
    if torch.get_num_threads() == 1:
        hint = (
            " (with one CPU thread, PyTorch upsamples 3 channels with a different bilinear kernel than 1"
            " channel, so upsampling only the best candidate can flip pixels whose logit is ~0; see bench/README.md)"
        )
    assert differing == 0, f"{case}: rwth-sam's mask differs from upstream's in {differing} pixels{hint}"
    assert np.array_equal(prediction.scores, np.asarray(upstream_scores, np.float32)), f"{case}: scores differ"
    assert np.array_equal(prediction.logits, np.asarray(upstream_low_res, np.float32)), f"{case}: logits differ"


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def print_row(case: str, row: dict) -> None:
    verdict = "ok" if row["meets_goal"] else "MISSED"
    print(
        f"  {case:8s} rwth-sam {fmt_ms(row['plugin_median_s']):>7s} ms   upstream {fmt_ms(row['upstream_median_s']):>7s} ms"
        f"   ratio {row['ratio']:.3f} (paired {row['paired_ratio_median']:.3f}, goal <= {row['goal']})  {verdict}",
        flush=True,
    )


def print_table(results: list[dict]) -> None:
    header = ["model", "case", "rwth-sam ms", "upstream ms", "ratio", "paired", "goal", "met"]
    rows = []
    for result in results:
        for case in CASES:
            row = result[case]
            rows.append(
                [
                    result["model"],
                    case,
                    fmt_ms(row["plugin_median_s"]),
                    fmt_ms(row["upstream_median_s"]),
                    f"{row['ratio']:.3f}",
                    f"{row['paired_ratio_median']:.3f}",
                    f"<= {row['goal']}",
                    "yes" if row["meets_goal"] else "NO",
                ]
            )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print("\n" + line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print("(medians; ratio = rwth-sam median / upstream median; paired = median of per-pair ratios)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated registry names, or 'all' (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    parser.add_argument(
        "--size", type=int, default=1024, help="side of the square uint8 RGB test image (default: 1024)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        nargs="+",
        metavar="N",
        default=[5, 30],
        help="timed repeats per side: ENCODER [PROMPT] (default: 5 30; PROMPT also counts refine)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads (default: torch's own, one per core); 1 is steadier on a busy machine",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the image and the random weights (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="write all timings and metadata to this JSON file")
    args = parser.parse_args(argv)
    if len(args.repeats) > 2 or min(args.repeats) < 1:
        parser.error("--repeats takes one or two positive counts: ENCODER [PROMPT]")
    args.encoder_repeats = args.repeats[0]
    args.prompt_repeats = args.repeats[1] if len(args.repeats) == 2 else 30
    if args.models.strip() == "all":
        args.model_names = [spec.name for spec in rwth_sam.model_specs()]
    else:
        args.model_names = [n.strip() for n in args.models.split(",") if n.strip()]
        for n in args.model_names:
            try:
                rwth_sam.get_model_spec(n)  # unknown names fail here, before any model is built
            except rwth_sam.InputError as error:
                parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = utc_now()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except rwth_sam.InputError as error:
        print(f"latency.py: error: {error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    rgb = rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
    info = machine_info(
        device,
        [
            "rwth-sam",
            "torch",
            "torchvision",
            "numpy",
            "segment-anything",
            "segment-anything-hq",
            "mobilesam-mirror",
            "sam2",
        ],
    )
    print(
        f"rwth-sam latency on {info.get('gpu', info['cpu'])} ({device}, {info['torch_threads']} torch threads), "
        f"{args.size}x{args.size} RGB, repeats: encoder {args.encoder_repeats}, prompt {args.prompt_repeats}"
    )
    if (
        device.type == "cpu"
        and info.get("load_average_at_start", (0,))[0] > (os.cpu_count() or 1) - torch.get_num_threads() + 0.5
    ):
        print(
            f"warning: load average {info['load_average_at_start'][0]:.1f} on {os.cpu_count()} cores: other processes "
            "compete for the CPU, timings will be noisy" + (" (try --threads 1)" if torch.get_num_threads() > 1 else "")
        )
    results = []
    for name in args.model_names:
        results.append(bench_model(name, rgb, device, args))
        release_memory(device)
    print_table(results)
    if args.json:
        write_report(args.json, {
            "date": started,
            "image": {"size": [args.size, args.size, 3], "dtype": "uint8", "content": f"uniform random, seed {args.seed}"},
            "repeats": {"encoder": args.encoder_repeats, "prompt": args.prompt_repeats},
            "goals": GOALS,
            "cases": CASES,
            "machine": info,
            "results": results,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
