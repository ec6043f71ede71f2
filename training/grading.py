"""Grades of the teacher's pseudo-labels and of the masks, on labelled clips of the domain.

Bootstrapping never sees labels. Where the domain has some (the project's generated
domains, a labelled sample of a robot's logs), `grade` shows what the teacher teaches:
it runs the self-supervised pass of training (`bootstap_ros_training.bootstrap.student_pass`: the
teacher's labels, the student's view and forward, the cycle-consistency and proximity
masks) on labelled clips, with the teacher queried on points of the true tracks, and
compares with the truth:

* grade_teacher_error_kept_px / _dropped_px: mean distance (256 raster) of the teacher's
  position from the truth, on entries the masks keep and on those they drop (where the
  teacher and the truth both see the point);
* grade_precision / grade_recall: of the positions the loss is taught (kept, teacher
  visible), the share that are right (truly visible, teacher within 4 px); of the right
  ones, the share kept;
* grade_visibility_agreement: the teacher's visibility (the rule the loss uses) equals the
  truth's, over every entry; grade_occlusion_agreement: the same for its occlusion logit
  alone (the occlusion target);
* grade_gap_px: mean distance of the student (mapped back) from the teacher on kept entries;
* grade_kept: the share of entries kept.
"""

from __future__ import annotations

from typing import Dict, List

import torch

GOOD_PX = 4.0  # a pseudo-label within this distance of the truth (256 raster) counts as right


class GradingSet:
    """Labelled clips of a TAP-Vid pickle, cut to `frames` frames and resized to `size`
    (positions scaled with them), for `grade`. Tracks never visible in the cut are dropped."""

    def __init__(self, path: str, size: int, frames: int, max_clips: int = 8, max_tracks: int = 128):
        from bootstap_ros.eval.datasets import _load_pickle, check_entry, resize_video

        data = _load_pickle(path)
        entries = list(data.values()) if isinstance(data, dict) else list(data)
        names = [str(n) for n in (data.keys() if isinstance(data, dict) else range(len(data)))]
        self.videos: List[torch.Tensor] = []
        self.tracks: List[torch.Tensor] = []
        self.visible: List[torch.Tensor] = []
        for name, entry in zip(names, entries):
            if len(self.videos) >= max_clips:
                break
            video, points, occluded = check_entry(entry, path, name)
            if video.shape[0] < frames:
                continue
            video, points, occluded = video[:frames], points[:max_tracks, :frames], occluded[:max_tracks, :frames]
            seen = (~occluded).any(-1)
            self.videos.append(torch.from_numpy(resize_video(video, size)))
            self.tracks.append(torch.from_numpy(points[seen] * size).float())  # [0, 1] -> raster
            self.visible.append(torch.from_numpy(~occluded[seen]))
        if not self.videos:
            raise ValueError(f"{path}: no clip of at least {frames} frames to grade pseudo-labels on")

    def __len__(self) -> int:
        return len(self.videos)


def _truth_queries(generator: torch.Generator, tracks: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """[1, N, 3] (t, y, x): each true track queried at a uniformly random visible frame."""
    scores = torch.rand(visible.shape, generator=generator)
    frame = torch.where(visible, scores, torch.full_like(scores, -1.0)).argmax(-1)
    xy = tracks[torch.arange(len(frame)), frame]
    return torch.stack([frame.float(), xy[:, 1], xy[:, 0]], -1)[None]


def grade(student: torch.nn.Module, teacher: torch.nn.Module, grading: GradingSet, config, step: int,
          device: torch.device, student_causal: bool, teacher_causal: bool) -> Dict[str, float]:
    """The grades (module docstring) of one pass over `grading` at training step `step`."""
    from .objective import step_generators, student_pass
    from .teacher import label_batch
    from .loop import model_forward

    numpy_rng, torch_rng = step_generators(config.seed, step, 1 << 20)
    pools: Dict[str, List[torch.Tensor]] = {k: [] for k in (
        "kept", "position", "true_visible", "teacher_error", "gap", "occlusion_visible")}
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            for video, tracks, true_visible in zip(grading.videos, grading.tracks, grading.visible):
                video = video[None].to(device)
                queries = _truth_queries(torch_rng, tracks, true_visible).to(device)
                outputs = label_batch(teacher, video, queries,
                                      lambda m, v, q: model_forward(m, v, q, config.amp, teacher_causal))
                result = student_pass(student, teacher, video, config, numpy_rng, torch_rng,
                                      student_causal, teacher_causal, labels=(queries, outputs))
                scale = 256.0 / video.shape[-2]
                truth = tracks.to(device)[None]
                pools["teacher_error"].append(
                    (torch.linalg.norm(result.targets.tracks - truth, dim=-1) * scale)[0].cpu())
                pools["gap"].append((torch.linalg.norm(result.back.tracks.float() - result.targets.tracks, dim=-1)
                                     * scale)[0].cpu())
                pools["kept"].append(result.keep[0].cpu())
                pools["position"].append(result.targets.position_mask[0].cpu())
                pools["true_visible"].append(true_visible)
                pools["occlusion_visible"].append((result.targets.occluded_prob < 0.5)[0].cpu())
    finally:
        student.train(was_training)
    return summarise(**{k: torch.cat([v.reshape(-1) for v in values]) for k, values in pools.items()})


def summarise(kept: torch.Tensor, position: torch.Tensor, true_visible: torch.Tensor, teacher_error: torch.Tensor,
              gap: torch.Tensor, occlusion_visible: torch.Tensor) -> Dict[str, float]:
    """The grades of pooled entries (module docstring): kept by the masks, taught as a position
    (teacher visible), truly visible, the teacher's error (px, 256 raster), the student's gap
    to the teacher, and visible by the teacher's occlusion logit alone."""
    kept, position, truly, error = kept.bool(), position.bool(), true_visible.bool(), teacher_error
    good = truly & position & (error < GOOD_PX)
    taught = kept & position

    def mean(values, where) -> float:
        return float(values[where].float().mean()) if bool(where.any()) else float("nan")

    return {
        "grade_teacher_error_kept_px": mean(error, taught & truly),
        "grade_teacher_error_dropped_px": mean(error, ~kept & position & truly),
        "grade_precision": mean(good, taught),
        "grade_recall": mean(taught, good),
        "grade_visibility_agreement": float((position == truly).float().mean()),
        "grade_occlusion_agreement": float((occlusion_visible.bool() == truly).float().mean()),
        "grade_gap_px": mean(gap, taught),
        "grade_kept": float(kept.float().mean()),
    }


def grade_run(run: str, path: str, device: str = "cpu", max_clips: int = 8) -> List[Dict[str, float]]:
    """Grades every checkpoint a run kept (`keep_every`: checkpoints/step_N.pt, each with its
    teacher, or a checkpoint teacher read from the run's config) on the labelled set `path`."""
    from pathlib import Path

    from bootstap_ros.model import build_model, load_checkpoint

    from .bootstrap_config import BootstrapConfig
    from .objective import load_fixed_teacher

    kept = sorted(Path(run).glob("checkpoints/step_*.pt"))
    if not kept:
        raise ValueError(f"{run}: no checkpoints/step_*.pt; run with keep_every=N to keep them")
    target = torch.device(device)
    rows = []
    for file in kept:
        loaded = load_checkpoint(file)
        config = BootstrapConfig.from_dict({**loaded.extra["bootstrap_config"], "output": str(run)})
        student = loaded.model.to(target)
        if "teacher" in loaded.extra:
            teacher = build_model(student.config, loaded.extra["teacher"], str(file)).to(target).eval()
        else:
            teacher = load_fixed_teacher(config).to(target)
        grading = GradingSet(path, student.config.resolution[0], config.clip_frames, max_clips)
        rows.append({"step": loaded.extra["step"], "elapsed_s": loaded.extra.get("elapsed_s"),
                     **grade(student, teacher, grading, config, loaded.extra["step"], target,
                             student.config.causal, teacher.config.causal)})
    return rows


def main(argv=None) -> int:
    import argparse
    import csv

    from bootstap_ros.cli.common import run_command

    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.grading",
                                     description="Grade the pseudo-labels of every checkpoint a bootstrapping "
                                                 "run kept (keep_every) against a labelled set of its domain.")
    parser.add_argument("run", help="the run directory (bootstap-train-bootstrap --output)")
    parser.add_argument("--grade", required=True, metavar="PKL", help="a labelled TAP-Vid pickle of the domain")
    parser.add_argument("--max-clips", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--output", default=None, help="CSV to write (default: RUN/grades.csv)")
    args = parser.parse_args(argv)
    rows: List[Dict[str, float]] = []
    status = run_command(parser.prog, lambda: rows.extend(grade_run(args.run, args.grade, args.device,
                                                                     args.max_clips)))
    if status:
        return status
    output = args.output or f"{args.run}/grades.csv"
    with open(output, "w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"step {row['step']}: precision {row['grade_precision']:.2f} recall {row['grade_recall']:.2f} "
              f"teacher error kept {row['grade_teacher_error_kept_px']:.1f} px, dropped "
              f"{row['grade_teacher_error_dropped_px']:.1f} px; gap {row['grade_gap_px']:.1f} px")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
