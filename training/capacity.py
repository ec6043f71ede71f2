"""BootsTAP's capacity expansion: extra residual conv blocks on the lowres features.

The paper adds 5 blocks (LayerNorm, 3x3 conv C -> 4C, GELU, 3x3 conv 4C -> C,
residual) to a pre-trained TAPIR and initialises them to the identity with
"zero init": the last conv of each block starts at zero, so its residual
branch adds nothing and every weight of the block still gets a gradient
(through the zero conv first, then the rest).

One caveat, measured rather than assumed: the official block (which the
released BootsTAPIR weights need, `bootstap_ros/model/layers.py`) adds its
residual to the *layer-normalised* input, so a zero-initialised block is the
LayerNorm, not the identity. The lowres features are L2-normalised after the
blocks, so what changes is only the removal of each position's channel mean
(LayerNorm's scale is undone by the L2 normalisation). On the embedded default
model (`python -m bootstap_ros_training.capacity --output X.pt --clips 8`) the median track
moves 0.03 px, the 99th percentile 3 px (a few ambiguous points jump to another
match), visibility agrees on 99.2% of (point, frame) and AJ goes 66.82 -> 66.77.
`test/test_pseudo_labels.py` checks the expanded model against the original
fed mean-centred features, exactly.

`python -m bootstap_ros_training.capacity` writes an expanded copy of a checkpoint and
measures that change on Kubric-lite clips.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from bootstap_ros.model.tapir import TAPIR


def expand_capacity(model: TAPIR, num_blocks: int = 5, multiplier: Optional[int] = None) -> TAPIR:
    """A new TAPIR with `num_blocks` zero-initialised extra conv blocks appended.

    All of `model`'s weights are copied; the new blocks get default LayerNorm
    (scale 1, shift 0), a default-initialised first conv and an all-zero last
    conv (`extra_convs.blocks.N.conv_1.*`). `multiplier` (the hidden width over
    the channels) defaults to the model config's (4, the paper's). A model that
    already has extra blocks keeps them and gets the new ones after them (its
    multiplier must then stay the same). `model` itself is not modified; the
    result has its device, dtype and train/eval mode.
    """
    if num_blocks < 1:
        raise ValueError(f"expand_capacity adds at least one block, got num_blocks={num_blocks}")
    config = model.config
    multiplier = config.extra_conv_multiplier if multiplier is None else int(multiplier)
    if config.extra_conv_blocks and multiplier != config.extra_conv_multiplier:
        raise ValueError(f"the model already has {config.extra_conv_blocks} extra conv blocks with multiplier "
                         f"{config.extra_conv_multiplier}; new blocks must use the same multiplier, got {multiplier}")
    existing = config.extra_conv_blocks
    expanded = TAPIR(config.replace(extra_conv_blocks=existing + num_blocks, extra_conv_multiplier=multiplier))
    missing, unexpected = expanded.load_state_dict(model.state_dict(), strict=False)
    new_prefixes = tuple(f"extra_convs.blocks.{i}." for i in range(existing, existing + num_blocks))
    stray = [k for k in missing if not k.startswith(new_prefixes)]
    if stray or unexpected:
        raise RuntimeError(f"expand_capacity: weights did not carry over (missing {stray}, unexpected {unexpected})")
    with torch.no_grad():
        for block in list(expanded.extra_convs.blocks)[existing:]:
            nn.init.zeros_(block.conv_1.weight)
            nn.init.zeros_(block.conv_1.bias)
    reference = next(model.parameters())
    expanded.to(device=reference.device, dtype=reference.dtype)
    expanded.train(model.training)
    return expanded


def compare_on_synthetic(original: TAPIR, expanded: TAPIR, num_clips: int, frames: int = 24,
                         num_points: int = 64, seed: int = 100000) -> dict:
    """How far the expanded model's outputs are from the original's, on Kubric-lite clips.

    Returns the mean and max track difference (px, 256 raster), the share of
    (point, frame) visibility calls that agree, and both models' AJ / <delta_avg / OA
    (strided scoring against the clips' exact labels).
    """
    from bootstap_ros.eval.metrics import compute_video_metrics, mean_over_videos
    from bootstap_ros.model.tapir import preprocess_frames, visibility

    from .domains.synthetic import SyntheticConfig, generate_clip

    config = SyntheticConfig(frames=frames, num_points=num_points)
    device = next(original.parameters()).device
    differences, agreements, scores = [], [], {"original": [], "expanded": []}
    for index in range(num_clips):
        clip = generate_clip(seed + index, config)
        frame_ids = clip.query_frames.astype(np.int64)
        xy = clip.tracks[np.arange(len(frame_ids)), frame_ids]
        queries = np.stack([frame_ids, xy[:, 1], xy[:, 0]], -1).astype(np.float32)
        video = preprocess_frames(torch.from_numpy(clip.video)[None].to(device))
        query_tensor = torch.from_numpy(queries)[None].to(device)
        outputs = {}
        with torch.no_grad():
            for name, model in (("original", original), ("expanded", expanded)):
                out = model(video, query_tensor)
                tracks = out.tracks[0].float().cpu().numpy()
                occluded = ~visibility(out.occlusion, out.expected_dist)[0].cpu().numpy()
                outputs[name] = (tracks, occluded)
                scores[name].append(compute_video_metrics(queries, clip.occluded, clip.tracks, occluded,
                                                          tracks, "strided"))
        scale = 256.0 / np.array([config.width, config.height])
        differences.append(np.linalg.norm((outputs["original"][0] - outputs["expanded"][0]) * scale, axis=-1))
        agreements.append(outputs["original"][1] == outputs["expanded"][1])
    differences = np.concatenate([d.ravel() for d in differences])
    report = {
        "clips": num_clips, "frames": frames, "points_per_clip": num_points,
        "track_difference_px_mean": float(differences.mean()),
        "track_difference_px_median": float(np.median(differences)),
        "track_difference_px_p99": float(np.percentile(differences, 99)),
        "track_difference_px_max": float(differences.max()),
        "visibility_agreement": float(np.mean(np.concatenate([a.ravel() for a in agreements]))),
    }
    for name, per_video in scores.items():
        mean = mean_over_videos(per_video)
        report[name] = {key: mean[key] for key in ("average_jaccard", "average_pts_within_thresh",
                                                   "occlusion_accuracy")}
    return report


def main(args=None) -> None:
    """Add zero-initialised extra conv blocks to a checkpoint and report what that changes."""
    import argparse
    import json
    from pathlib import Path

    from bootstap_ros.model.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint

    parser = argparse.ArgumentParser(
        prog="python -m bootstap_ros_training.capacity",
        description="BootsTAP capacity expansion: write a copy of a checkpoint with extra conv blocks "
                    "(zero-initialised), and measure on synthetic clips how much that changes its outputs.")
    parser.add_argument("--checkpoint", default=None,
                        help="model to expand (project or official checkpoint); default: the embedded model")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                        help="for official bare checkpoints: whether the model is causal")
    parser.add_argument("--output", required=True, help="where to write the expanded checkpoint (.pt)")
    parser.add_argument("--blocks", type=int, default=5, help="extra conv blocks to add (default 5, the paper's)")
    parser.add_argument("--clips", type=int, default=4,
                        help="Kubric-lite clips to compare the two models on (0 skips the comparison)")
    parser.add_argument("--frames", type=int, default=24, help="frames per comparison clip")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", default=None,
                        help="JSON file for the comparison (default: the output path with .json)")
    options = parser.parse_args(args)

    source = resolve_checkpoint(options.checkpoint)
    loaded = load_checkpoint(source, causal=options.causal)
    original = loaded.model.to(options.device).eval()
    expanded = expand_capacity(original, options.blocks)
    output = Path(options.output)
    save_checkpoint(output, expanded.cpu(), expanded_from=str(source), added_extra_conv_blocks=options.blocks)
    print(f"wrote {output}: {expanded.config.extra_conv_blocks} extra conv blocks "
          f"({original.config.extra_conv_blocks} before)")
    if options.clips <= 0:
        return
    expanded.to(options.device)
    report = compare_on_synthetic(original, expanded, options.clips, options.frames)
    report["checkpoint"] = str(source)
    report_path = Path(options.report) if options.report else output.with_suffix(".json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"expanded vs original on {report['clips']} Kubric-lite clips, track differences (px, 256 raster): "
          f"mean {report['track_difference_px_mean']:.3f}, median {report['track_difference_px_median']:.3f}, "
          f"99th percentile {report['track_difference_px_p99']:.3f}, max {report['track_difference_px_max']:.3f}; "
          f"visibility agrees on {100 * report['visibility_agreement']:.2f}% of (point, frame)")
    for name in ("original", "expanded"):
        r = report[name]
        print(f"  {name:9s} AJ {100 * r['average_jaccard']:.2f}  <delta_avg {100 * r['average_pts_within_thresh']:.2f}"
              f"  OA {100 * r['occlusion_accuracy']:.2f}")
    print(f"report: {report_path}")


if __name__ == "__main__":
    main()
