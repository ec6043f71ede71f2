"""Accuracy under a real clock: each clip fed to a tracker as a camera would feed it.

Frame ``t`` arrives at ``t / fps`` seconds on this machine's clock, whether or not the tracker is
ready. What is scored for frame ``t`` is what the tracker had published by the time frame
``t + 1`` arrived: its answer for ``t`` if it gave one in time, else its latest answer for an
earlier frame (what a controller holding the last message would use), else nothing (every point
occluded). Beside it, the same run's answers matched to their own frames (frames never answered
are not scored there), the fraction of frames answered, the output rate and the latency from a
frame's arrival to its answer.

Three systems, in the same protocol:

- ``lk``: pyramidal Lucas-Kanade (`eval.lk`), on every frame as it arrives;
- ``network``: the network alone, on the newest frame whenever it is free (a node without
  propagation);
- ``propagated``: every frame answered by propagation, network results fused when they land
  (`tracking.realtime.RealtimeTracker`).

Clock-free scores (`bootstap-eval` without ``--realtime``) give the tracker every frame however
long it takes; these do not.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from bootstap_ros.eval.metrics import compute_video_metrics

SYSTEMS = ("lk", "network", "propagated")


@dataclass
class Answer:
    """One published answer: for which frame, when, and the points it holds."""

    frame: int
    time: float  # seconds since the clip started
    ids: np.ndarray  # int64 [K]
    xy: np.ndarray  # float32 [K, 2] (x, y) in the clip's raster
    visible: np.ndarray  # bool [K]


@dataclass
class Replay:
    """Everything one clip's real-time replay produced."""

    fps: float
    num_frames: int
    answers: List[Answer] = field(default_factory=list)
    network_steps: int = 0

    def arrival(self, frame: int) -> float:
        return frame / self.fps


def held_predictions(replay: Replay, ids_of_rows: np.ndarray, query_xy: np.ndarray):
    """What a subscriber holds for each frame when the next one arrives: tracks [N, T, 2] and
    occluded [N, T] for the query rows (row i is point ``ids_of_rows[i]``); a point the held
    answer does not carry (none yet) is occluded at its query position."""
    answers = sorted(replay.answers, key=lambda a: a.time)
    times = np.array([a.time for a in answers])
    num = len(ids_of_rows)
    tracks = np.repeat(np.asarray(query_xy, np.float32)[:, None], replay.num_frames, axis=1)
    occluded = np.ones((num, replay.num_frames), bool)
    for frame in range(replay.num_frames):
        deadline = replay.arrival(frame + 1)
        count = int(np.searchsorted(times, deadline, side="left"))  # strictly before it
        if count:
            _fill(answers[count - 1], ids_of_rows, tracks[:, frame], occluded[:, frame])
    return tracks, occluded


def matched_predictions(replay: Replay, ids_of_rows: np.ndarray, query_xy: np.ndarray):
    """Each answer at its own frame (the last one given for a frame, whenever it came): tracks,
    occluded and answered bool [T]; unanswered frames hold occluded query positions."""
    num = len(ids_of_rows)
    tracks = np.repeat(np.asarray(query_xy, np.float32)[:, None], replay.num_frames, axis=1)
    occluded = np.ones((num, replay.num_frames), bool)
    answered = np.zeros(replay.num_frames, bool)
    for answer in sorted(replay.answers, key=lambda a: a.time):
        _fill(answer, ids_of_rows, tracks[:, answer.frame], occluded[:, answer.frame])
        answered[answer.frame] = True
    return tracks, occluded, answered


def _fill(answer: Answer, ids_of_rows: np.ndarray, tracks: np.ndarray, occluded: np.ndarray) -> None:
    rows = {int(i): r for r, i in enumerate(answer.ids)}
    for row, point_id in enumerate(ids_of_rows.tolist()):
        at = rows.get(point_id)
        if at is not None:
            tracks[row] = answer.xy[at]
            occluded[row] = not answer.visible[at]


def timing(replay: Replay) -> Dict[str, float]:
    """Fraction of frames answered, output rate (answers per second of the clip) and the latency
    from arrival to answer (p50, p95, ms) of the answers given."""
    frames = {a.frame for a in replay.answers}
    latencies = [1e3 * (a.time - replay.arrival(a.frame)) for a in replay.answers]
    duration = replay.num_frames / replay.fps
    return {
        "frames_answered": len(frames) / replay.num_frames,
        "output_hz": len(replay.answers) / duration,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "network_steps": replay.network_steps,
    }


def score(replay: Replay, query_points: np.ndarray, gt_tracks: np.ndarray, gt_occluded: np.ndarray,
          ids_of_rows: np.ndarray) -> Dict[str, Dict[str, float]]:
    """TAP-Vid metrics (first-frame protocol) of what a subscriber held ("held") and of the answers
    at their own frames ("matched", answered frames only), plus the timing."""
    query_xy = np.asarray(query_points)[:, [2, 1]]
    held_tracks, held_occluded = held_predictions(replay, ids_of_rows, query_xy)
    matched_tracks, matched_occluded, answered = matched_predictions(replay, ids_of_rows, query_xy)
    return {
        "held": compute_video_metrics(query_points, gt_occluded, gt_tracks, held_occluded, held_tracks, "first"),
        "matched": compute_video_metrics(query_points, gt_occluded, gt_tracks, matched_occluded, matched_tracks,
                                         "first", frames=answered),
        "timing": timing(replay),
    }


# ------------------------------------------------------------------------------------ systems

class _LucasKanade:
    """Pyramidal LK (the evaluation's baseline) frame by frame, answering each frame at once."""

    first_id = 0

    def __init__(self, publish):
        from bootstap_ros.eval.lk import LucasKanadePredictor

        import cv2

        self._cv2 = cv2
        self._lk = LucasKanadePredictor()
        self._publish = publish
        self._grey = None
        self._ids = np.zeros(0, np.int64)
        self._xy = np.zeros((0, 2), np.float32)  # OpenCV convention: centres at integers
        self._alive = np.zeros(0, bool)

    def frame(self, index: int, rgb: np.ndarray, add: Optional[np.ndarray], ids: Optional[np.ndarray]) -> None:
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        tracked = np.flatnonzero(self._alive)
        if tracked.size and self._grey is not None:
            moved, keep = self._lk._track(self._grey, grey, self._xy[tracked])
            self._xy[tracked[keep]] = moved[keep]
            self._alive[tracked[~keep]] = False  # a lost point stays occluded, as the baseline does
        if add is not None:
            self._ids = np.concatenate([self._ids, ids])
            self._xy = np.concatenate([self._xy, add - 0.5]).astype(np.float32)
            self._alive = np.concatenate([self._alive, np.ones(len(add), bool)])
        self._grey = grey
        self._publish(index, self._ids.copy(), self._xy + 0.5, self._alive.copy())

    def close(self) -> int:
        return 0


class _Network:
    """The network alone, or with propagation (RealtimeTracker)."""

    def __init__(self, publish, tracker, propagation: str, frame_shape):
        from bootstap_ros.tracking.realtime import RealtimeTracker

        # A running node's network is warm: one step before the clip, then forget the point.
        blank = np.zeros(frame_shape, np.uint8)
        tracker.step(blank, add=np.array([[frame_shape[1] / 2, frame_shape[0] / 2]], np.float32))
        tracker.reset()
        self.first_id = tracker.next_id
        self._publish = publish
        self._propagation = propagation
        self._realtime = RealtimeTracker(tracker, propagation=propagation, on_network=self._landed)

    def _landed(self, index, result, seconds) -> None:
        if self._propagation == "none":
            self._publish(index, result.ids, result.xy, result.visible)

    def frame(self, index: int, rgb: np.ndarray, add: Optional[np.ndarray], ids: Optional[np.ndarray]) -> None:
        estimate = self._realtime.submit(rgb, add=add)
        if estimate is not None:
            self._publish(index, estimate.ids, estimate.xy, estimate.visible)

    def close(self) -> int:
        self._realtime.close()
        if self._realtime.error is not None:
            raise RuntimeError(f"the network failed: {self._realtime.error}") from self._realtime.error
        return self._realtime.counts["network"]


def replay_clip(system: str, video: np.ndarray, query_points: np.ndarray, fps: float,
                make_tracker: Optional[Callable] = None, clock=time.monotonic, sleep=time.sleep):
    """Feed ``video`` (uint8 [T, H, W, 3]) to ``system`` at ``fps`` against ``clock``.

    query_points: float [N, 3] (t, y, x); each point is added on its query frame. Returns the
    `Replay` and the id each query row got. make_tracker: a fresh `CausalTracker` for the
    network systems."""
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    num_frames = len(video)
    query_points = np.asarray(query_points, np.float32).reshape(-1, 3)
    query_frames = np.round(query_points[:, 0]).astype(np.int64)
    order = np.argsort(query_frames, kind="stable")
    ids_of_rows = np.empty(len(query_points), np.int64)
    ids_of_rows[order] = np.arange(len(query_points))  # ids in the order the points are added
    replay = Replay(fps=fps, num_frames=num_frames)
    lock = threading.Lock()
    start = [0.0]

    def publish(index, ids, xy, visible):
        now = clock() - start[0]
        with lock:
            replay.answers.append(Answer(index, now, np.asarray(ids, np.int64).copy(),
                                         np.asarray(xy, np.float32).copy(), np.asarray(visible, bool).copy()))

    if system == "lk":
        runner = _LucasKanade(publish)
    else:
        if make_tracker is None:
            raise ValueError("the network systems need make_tracker")
        runner = _Network(publish, make_tracker(), "lk" if system == "propagated" else "none", video.shape[1:])
    ids_of_rows += runner.first_id
    start[0] = clock()
    try:
        for index in range(num_frames):
            wait = start[0] + index / fps - clock()
            if wait > 0:
                sleep(wait)
            adding = order[query_frames[order] == index]
            add = query_points[adding][:, [2, 1]] if len(adding) else None
            runner.frame(index, np.ascontiguousarray(video[index]), add, ids_of_rows[adding] if len(adding) else None)
        wait = start[0] + num_frames / fps - clock()
        if wait > 0:
            sleep(wait)  # the last frame's answer counts until the next frame would have come
    finally:
        replay.network_steps = runner.close()
    with lock:
        replay.answers = [a for a in replay.answers if a.time < num_frames / fps]
    return replay, ids_of_rows
