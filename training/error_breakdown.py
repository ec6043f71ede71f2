"""Where a tracker's errors come from: TAP-Vid scores broken down by properties of the points.

Reads a TAP-Vid pickle and one or more `bootstap-eval --save-predictions` files made from
it (first-frame queries, the 256x256 evaluation raster), and pools every scored
(point, frame) pair into bins of:

- speed: ground-truth motion since the previous frame, raster px per frame;
- texture: mean Sobel gradient magnitude (grey levels 0..1 per pixel) in a 9x9 window
  around the point on its query frame, in the resized 256x256 frame the tracker sees;
- border: distance of the true position to the nearest image edge, raster px;
- age: frames since the query frame;
- after_occlusion: whether the point was hidden at some frame between its query and now.

Per bin: scored visible pairs, pooled Jaccard at 1..16 px and their mean (an AJ over the
bin's pairs, not over videos), <delta_avg, median error, occlusion accuracy, and the
share of tracks lost (more than 16 px off at their last visible scored frame).

    python -m bootstap_ros_training.error_breakdown outputs/rt/data/robot_val.pkl \
        model=robot_model.npz lk=robot_lk.npz --output robot_breakdown.json

Extra per-pair flags (e.g. "hidden by the robot arm") can be given by `extra_masks`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence

import cv2
import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
RASTER = 256
BINS = {
    "speed": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, np.inf),
    "texture": (0.0, 0.02, 0.04, 0.08, 0.16, np.inf),
    "border": (0.0, 8.0, 16.0, 32.0, np.inf),
    "age": (1, 4, 8, 16, 10 ** 6),
}


def texture_map(frame: np.ndarray, window: int = 9) -> np.ndarray:
    """Mean Sobel gradient magnitude in a window, float32 [H, W], for an RGB uint8 frame."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8
    return cv2.blur(np.sqrt(gx ** 2 + gy ** 2), (window, window))


def point_properties(video: np.ndarray, tracks: np.ndarray, occluded: np.ndarray,
                     query_frames: np.ndarray) -> Dict[str, np.ndarray]:
    """Per (point, frame) properties, float [N, T], at the evaluation raster.

    video: uint8 [T, H, W, 3] as stored; tracks: [N, T, 2] raster x, y at RASTER.
    """
    frames = video.shape[0]
    num = tracks.shape[0]
    speed = np.zeros((num, frames))
    speed[:, 1:] = np.linalg.norm(np.diff(tracks, axis=1), axis=-1)
    border = np.minimum(np.minimum(tracks[..., 0], RASTER - tracks[..., 0]),
                        np.minimum(tracks[..., 1], RASTER - tracks[..., 1]))
    texture = np.zeros(num)
    for t in np.unique(query_frames):
        resized = cv2.resize(video[t], (RASTER, RASTER), interpolation=cv2.INTER_LINEAR)
        energy = texture_map(resized)
        chosen = query_frames == t
        xy = np.clip(np.floor(tracks[chosen, t]).astype(int), 0, RASTER - 1)
        texture[chosen] = energy[xy[:, 1], xy[:, 0]]
    age = np.arange(frames)[None, :] - query_frames[:, None]
    hidden_since_query = np.zeros((num, frames), bool)
    for t in range(1, frames):
        hidden_since_query[:, t] = hidden_since_query[:, t - 1] | (occluded[:, t - 1] & (age[:, t - 1] >= 0))
    return {"speed": speed, "texture": np.repeat(texture[:, None], frames, 1), "border": border,
            "age": age.astype(float), "after_occlusion": hidden_since_query.astype(float)}


class Pool:
    """Counts of one bin, summed over videos."""

    def __init__(self):
        self.scored = self.visible = self.oa_correct = 0
        self.true_pos = np.zeros(len(THRESHOLDS))
        self.false_pos = np.zeros(len(THRESHOLDS))
        self.within = np.zeros(len(THRESHOLDS))
        self.errors = []
        self.tracks = self.lost = 0

    def add(self, mask, gt_occluded, gt_tracks, pred_occluded, pred_tracks):
        gt_visible = ~gt_occluded & mask
        pred_visible = ~pred_occluded & mask
        error = np.linalg.norm(pred_tracks - gt_tracks, axis=-1)
        self.scored += int(mask.sum())
        self.visible += int(gt_visible.sum())
        self.oa_correct += int(((pred_occluded == gt_occluded) & mask).sum())
        for i, threshold in enumerate(THRESHOLDS):
            within = error < threshold
            self.within[i] += (gt_visible & within).sum()
            self.true_pos[i] += (gt_visible & within & pred_visible).sum()
            self.false_pos[i] += (pred_visible & ~(gt_visible & within)).sum()
        self.errors.append(error[gt_visible])
        for row in range(mask.shape[0]):
            frames = np.flatnonzero(gt_visible[row])
            if len(frames):
                self.tracks += 1
                self.lost += int(error[row, frames[-1]] > 16)

    def summary(self) -> Dict[str, float]:
        if not self.visible:
            return {"visible_pairs": 0, "scored_pairs": self.scored,
                    "OA": 100 * self.oa_correct / self.scored if self.scored else float("nan")}
        jaccard = self.true_pos / (self.visible + self.false_pos)
        errors = np.concatenate(self.errors)
        return {"visible_pairs": self.visible, "scored_pairs": self.scored,
                "AJ": 100 * float(jaccard.mean()),
                **{f"jaccard_{d}": 100 * float(j) for d, j in zip(THRESHOLDS, jaccard)},
                "delta_avg": 100 * float((self.within / self.visible).mean()),
                "OA": 100 * self.oa_correct / self.scored, "median_error_px": float(np.median(errors)),
                "lost_tracks": 100 * self.lost / max(self.tracks, 1)}


def breakdown(dataset: Mapping[str, dict], predictions: Mapping[str, Mapping[str, np.ndarray]],
              extra_masks: Optional[Callable[[str, dict], Dict[str, np.ndarray]]] = None) -> Dict:
    """{tracker: {"all": summary, property: {bin: summary}}} over every video of `dataset`."""
    pools: Dict[str, Dict[str, Pool]] = {name: {} for name in predictions}
    for video_name in sorted(dataset):
        item = dataset[video_name]
        video = np.asarray(item["video"])
        gt_tracks = np.asarray(item["points"], np.float64) * RASTER
        gt_occluded = np.asarray(item["occluded"], bool)
        any_prediction = next(iter(predictions.values()))
        count = any_prediction[f"{video_name}/tracks"].shape[0]
        gt_tracks, gt_occluded = gt_tracks[:count], gt_occluded[:count]
        query_frames = np.round(any_prediction[f"{video_name}/query_points"][:, 0]).astype(int)
        props = point_properties(video, gt_tracks, gt_occluded, query_frames)
        scored = np.arange(video.shape[0])[None, :] > query_frames[:, None]
        masks = {"all": scored}
        for prop, edges in BINS.items():
            for low, high in zip(edges[:-1], edges[1:]):
                masks[f"{prop}/[{low:g},{high:g})"] = scored & (props[prop] >= low) & (props[prop] < high)
        masks["after_occlusion/no"] = scored & (props["after_occlusion"] == 0)
        masks["after_occlusion/yes"] = scored & (props["after_occlusion"] > 0)
        if extra_masks is not None:
            for key, extra in extra_masks(video_name, item).items():
                masks[key] = scored & extra[:count]
        for name, preds in predictions.items():
            pred_tracks = preds[f"{video_name}/tracks"]
            pred_occluded = preds[f"{video_name}/occluded"]
            for key, mask in masks.items():
                pools[name].setdefault(key, Pool()).add(mask, gt_occluded, gt_tracks, pred_occluded, pred_tracks)
    return {name: {key: pool.summary() for key, pool in table.items()} for name, table in pools.items()}


def format_table(result: Dict, columns: Sequence[str] = ("AJ", "jaccard_1", "jaccard_16", "OA",
                                                         "median_error_px", "lost_tracks")) -> str:
    names = list(result)
    keys = list(next(iter(result.values())))
    lines = ["bin | visible pairs | " + " | ".join(f"{n} {c}" for c in columns for n in names)]
    for key in keys:
        cells = []
        for column in columns:
            for name in names:
                value = result[name][key].get(column)
                cells.append("-" if value is None else f"{value:.1f}")
        lines.append(f"{key} | {result[names[0]][key].get('visible_pairs', 0)} | " + " | ".join(cells))
    return "\n".join(lines)


def robot_arm_masks(num_points: int, frames: int) -> Callable[[str, dict], Dict[str, np.ndarray]]:
    """Flags for robot-domain clips (`robot_<seed>`), from the clip re-generated from its seed:
    pairs hidden by the arm, pairs on the arm, and pairs after an arm occlusion."""
    from .domains.robot_domain import TABLE_KINDS, RobotConfig, generate_robot_clip

    def masks(video_name: str, item: dict) -> Dict[str, np.ndarray]:
        seed = int(video_name.rsplit("_", 1)[1])
        clip = generate_robot_clip(seed, RobotConfig(frames=frames, num_points=num_points, photometric=False))
        stored = np.asarray(item["points"]) * np.array([clip.video.shape[2], clip.video.shape[1]])
        if not np.allclose(stored, clip.tracks, atol=1e-3):
            raise ValueError(f"{video_name}: re-generated tracks differ from the stored ones")
        arm = clip.scene.num_layers - 1
        # Objects have square textures, the arm's sprite is long and narrow.
        sprite_h, sprite_w = clip.scene.textures[arm].shape[:2]
        has_arm = arm > 0 and sprite_w > 2 * sprite_h
        xy = np.clip(np.floor(clip.tracks).astype(int), 0, [clip.video.shape[2] - 1, clip.video.shape[1] - 1])
        shown = clip.layer_ids[np.arange(frames)[None], xy[..., 1], xy[..., 0]]
        height, width = clip.video.shape[1:3]
        inside = ((clip.tracks >= 0) & (clip.tracks < [width, height])).all(-1)
        hidden_by_arm = clip.occluded & inside & (shown == arm) & bool(has_arm)
        on_arm = np.repeat((clip.track_layers == arm)[:, None], frames, 1) & bool(has_arm)
        after_arm = np.cumsum(hidden_by_arm, axis=1) > hidden_by_arm
        # The table's kind is the clip generator's first draw.
        kind = TABLE_KINDS[np.random.default_rng(seed).integers(len(TABLE_KINDS))]
        on_table = np.repeat((clip.track_layers == 0)[:, None], frames, 1)
        on_object = ~on_table & ~on_arm
        return {f"table_kind/{name}": np.full_like(on_table, name == kind) for name in TABLE_KINDS} | {
                "layer/table": on_table, "layer/object": on_object,
                "arm/hidden_by_arm": hidden_by_arm, "arm/on_arm": on_arm,
                "arm/after_arm_occlusion": after_arm & ~clip.occluded,
                "arm/never_near_arm": ~np.cumsum(hidden_by_arm, axis=1).astype(bool) & ~on_arm}

    return masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.error_breakdown",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="TAP-Vid pickle the predictions were made from")
    parser.add_argument("predictions", nargs="+", help="NAME=PREDS.npz from bootstap-eval --save-predictions")
    parser.add_argument("--output", help="write the breakdown as JSON here")
    parser.add_argument("--robot-arm", action="store_true",
                        help="robot-domain clips: add the arm's occlusion flags (re-generates each clip)")
    options = parser.parse_args(argv)
    with open(options.dataset, "rb") as file:
        dataset = pickle.load(file)
    predictions = {}
    for entry in options.predictions:
        name, _, path = entry.partition("=")
        predictions[name] = dict(np.load(path))
    extra = None
    if options.robot_arm:
        first = dataset[sorted(dataset)[0]]
        extra = robot_arm_masks(np.asarray(first["points"]).shape[0], np.asarray(first["video"]).shape[0])
    result = breakdown(dataset, predictions, extra)
    print(format_table(result))
    if options.output:
        with open(options.output, "w") as file:
            json.dump(result, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
