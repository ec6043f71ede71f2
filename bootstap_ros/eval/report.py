"""The optional evaluation report: a per-video CSV, two plots and frame strips.

This module owns what ``bootstap-eval --report DIR`` writes:

- ``per_video.csv``: every metric of every video;
- ``per_video_aj.png``: per-video AJ, sorted;
- ``thresholds.png``: mean Jaccard and pts_within against the pixel threshold;
- ``worst_<k>_<name>.png``: for the K videos with the lowest AJ, a strip of
  frames with visible ground truth (green rings) and predictions (red dots;
  hollow when predicted occluded), a line joining each prediction to its
  visible ground truth.

Matplotlib is imported only when plotting, with the Agg backend.
"""

from __future__ import annotations

import csv
import heapq
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from bootstap_ros.eval.metrics import METRIC_NAMES, THRESHOLDS

STRIP_FRAMES = 5
STRIP_MAX_POINTS = 64
GT_COLOUR = (40, 200, 40)  # RGB
PRED_COLOUR = (230, 40, 40)


@dataclass(order=True)
class _Strip:
    """What a frame strip needs, kept only for the current worst videos."""

    badness: float  # -AJ, so the heap's smallest is the best of the kept.
    name: str = field(compare=False)
    frames: np.ndarray = field(compare=False)  # uint8 [F, R, R, 3]
    frame_indices: np.ndarray = field(compare=False)  # int [F]
    gt_tracks: np.ndarray = field(compare=False)  # [P, F, 2]
    gt_occluded: np.ndarray = field(compare=False)  # [P, F]
    tracks: np.ndarray = field(compare=False)
    occluded: np.ndarray = field(compare=False)


class WorstVideos:
    """Keeps the frames needed to draw strips of the K lowest-AJ videos seen so far.

    Only ``STRIP_FRAMES`` frames and ``STRIP_MAX_POINTS`` tracks of each of the
    K videos are kept, so memory stays small however long the dataset is.
    """

    def __init__(self, count: int = 3):
        self.count = count
        self._heap: list[_Strip] = []

    def offer(self, name, average_jaccard, video, gt_tracks, gt_occluded, tracks, occluded):
        if self.count <= 0 or not np.isfinite(average_jaccard):
            return
        badness = -float(average_jaccard)
        if len(self._heap) == self.count and badness <= self._heap[0].badness:
            return
        indices = np.unique(np.linspace(0, len(video) - 1, STRIP_FRAMES).round().astype(int))
        points = slice(0, STRIP_MAX_POINTS)
        strip = _Strip(
            badness,
            name,
            np.array(video[indices]),
            indices,
            np.array(gt_tracks[points][:, indices]),
            np.array(gt_occluded[points][:, indices]),
            np.array(tracks[points][:, indices]),
            np.array(occluded[points][:, indices]),
        )
        if len(self._heap) < self.count:
            heapq.heappush(self._heap, strip)
        else:
            heapq.heapreplace(self._heap, strip)

    def worst_first(self) -> list[_Strip]:
        return sorted(self._heap, reverse=True)


def _point(xy: np.ndarray) -> tuple[int, int]:
    # Raster coordinates put pixel centres at i + 0.5; OpenCV draws at integers.
    return int(round(float(xy[0]) - 0.5)), int(round(float(xy[1]) - 0.5))


def draw_strip(strip: _Strip) -> np.ndarray:
    """One RGB image: the strip's frames side by side with points drawn on them."""
    panels = []
    for column, frame_index in enumerate(strip.frame_indices):
        panel = np.ascontiguousarray(strip.frames[column]).copy()
        for point in range(len(strip.gt_tracks)):
            gt = strip.gt_tracks[point, column]
            pred = strip.tracks[point, column]
            gt_visible = not strip.gt_occluded[point, column]
            if gt_visible:
                cv2.line(panel, _point(gt), _point(pred), PRED_COLOUR, 1, cv2.LINE_AA)
                cv2.circle(panel, _point(gt), 5, GT_COLOUR, 1, cv2.LINE_AA)
            if strip.occluded[point, column]:
                cv2.circle(panel, _point(pred), 3, PRED_COLOUR, 1, cv2.LINE_AA)
            else:
                cv2.circle(panel, _point(pred), 2, PRED_COLOUR, -1, cv2.LINE_AA)
        cv2.putText(panel, f"t={frame_index}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(panel)
    image = np.concatenate(panels, axis=1)
    title = np.zeros((20, image.shape[1], 3), np.uint8)
    cv2.putText(title, f"{strip.name}  AJ {-100 * strip.badness:.1f}", (4, 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([title, image], axis=0)


def write_per_video_csv(path: str, per_video: Mapping[str, Mapping[str, float]]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["video", *METRIC_NAMES])
        for name, metrics in per_video.items():
            writer.writerow([name, *(f"{metrics[key]:.6f}" for key in METRIC_NAMES)])


def plot_summary(report_dir: str, per_video: Mapping[str, Mapping[str, float]],
                 mean: Mapping[str, float]) -> list[str]:
    """Write the per-video AJ plot and the threshold curves; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = sorted(per_video, key=lambda name: per_video[name]["average_jaccard"])
    values = [100 * per_video[name]["average_jaccard"] for name in names]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.25 * len(names)), 4))
    axes.bar(range(len(names)), values, color="tab:blue")
    axes.axhline(100 * mean["average_jaccard"], color="tab:red", linestyle="--", label="mean")
    if len(names) <= 40:
        axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axes.set_ylabel("AJ (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Average Jaccard per video")
    axes.legend()
    figure.tight_layout()
    aj_path = os.path.join(report_dir, "per_video_aj.png")
    figure.savefig(aj_path, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(5, 4))
    for prefix, label in (("jaccard", "Jaccard"), ("pts_within", "pts within")):
        axes.plot(THRESHOLDS, [100 * mean[f"{prefix}_{d}"] for d in THRESHOLDS], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(THRESHOLDS, [str(d) for d in THRESHOLDS])
    axes.set_xlabel("threshold (pixels of the evaluation raster)")
    axes.set_ylabel("%")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    curve_path = os.path.join(report_dir, "thresholds.png")
    figure.savefig(curve_path, dpi=100)
    plt.close(figure)
    return [aj_path, curve_path]


def write_report(report_dir: str, per_video: Mapping[str, Mapping[str, float]],
                 mean: Mapping[str, float], worst: WorstVideos) -> list[str]:
    """Write the whole report into ``report_dir``; return the files written."""
    os.makedirs(report_dir, exist_ok=True)
    csv_path = os.path.join(report_dir, "per_video.csv")
    write_per_video_csv(csv_path, per_video)
    written = [csv_path]
    if per_video:
        written += plot_summary(report_dir, per_video, mean)
    for rank, strip in enumerate(worst.worst_first(), start=1):
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", strip.name)
        path = os.path.join(report_dir, f"worst_{rank}_{safe_name}.png")
        cv2.imwrite(path, cv2.cvtColor(draw_strip(strip), cv2.COLOR_RGB2BGR))
        written.append(path)
    return written
