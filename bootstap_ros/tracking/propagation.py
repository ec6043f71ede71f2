"""Camera-rate output between network steps: points carried forward frame to frame, and each
network result fused in when it lands.

On a CPU the network answers a few frames a second while the camera sends 30. This module owns
what a controller sees in between. Every point has two cheap tracks, both advanced on every frame
with pyramidal Lucas-Kanade (OpenCV, with a forward-backward check):

- the *network track*: the network's last estimate, carried from the frame it was computed on to
  the newest (where the check fails, by the point's own motion between its network results);
- the *LK track*: Lucas-Kanade alone from where the point was queried, lost for good when the
  check fails (the classical baseline), and restarted from the network's estimate whenever the
  network is sure of the point.

What is published for a point follows the network's own uncertainty (its expected-distance head):
where the network is sure (uncertainty <= ``trust_uncertainty``) its track, position and
visibility; where it is not, the LK track while that is alive (visible, at the LK position), else
the network's. On the validation clips the network's uncertainty told well when it was wrong
(docs/speed.md, *Accuracy under a real clock*), so the fusion keeps the better of the two
trackers per point, and a point is not dragged along by Lucas-Kanade when the network is sure it
is occluded. The network's causal state is never touched: it stays the tracker's own.

When a network result for frame ``s`` lands after frames ``s+1 .. t`` were answered, its network
track is carried through the frames kept (``s+1 .. t``) to the newest one.

Positions are pixel ``x, y`` of the input image with pixel centres at +0.5 (the tracker's
convention); OpenCV's centres are at integers, so they are shifted by 0.5 on the way in and out.
No ROS, no torch: the node, ``bootstap-track`` and the real-time evaluation share this class.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class PropagationConfig:
    """How points are carried between network results (pixels of the input image)."""

    window_size: int = 21  # Lucas-Kanade window, pixels
    pyramid_levels: int = 3
    max_iterations: int = 30
    epsilon: float = 0.01
    max_forward_backward_error: float = 1.0  # pixels: beyond it a frame's LK step is not trusted
    history: int = 30  # frames kept to carry a late network result forward to the newest frame
    # Frames kept at most while a network step runs on a held frame (`Propagator.hold`): a step
    # slower than `history` frames of the camera is still carried forward, up to this lag.
    max_held: int = 300
    # The network is trusted for a point when its uncertainty (probability that its position is
    # more than 6 px of the 256 raster off) is at most this; else the LK track is used.
    trust_uncertainty: float = 0.02
    velocity_smoothing: float = 0.5  # weight of the newest network-to-network velocity
    # A lost LK track restarts from the network where the network's uncertainty is at most this
    # (a live one is left alone: restarting it from a network that is sure but wrong costs more).
    restart_uncertainty: float = 0.02

    def __post_init__(self):
        if self.window_size < 3 or self.window_size % 2 == 0:
            raise ValueError(f"window_size must be an odd number >= 3, got {self.window_size}")
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        if self.max_held < self.history:
            raise ValueError(f"max_held ({self.max_held}) must be >= history ({self.history})")
        if not 0.0 <= self.trust_uncertainty <= 1.0:
            raise ValueError(f"trust_uncertainty must be in [0, 1], got {self.trust_uncertainty}")
        if not 0.0 < self.velocity_smoothing <= 1.0:
            raise ValueError(f"velocity_smoothing must be in (0, 1], got {self.velocity_smoothing}")


@dataclass
class Estimate:
    """What is published for the newest frame, rows in id order."""

    ids: np.ndarray  # int64 [K]
    xy: np.ndarray  # float32 [K, 2] pixels, centres at +0.5
    visible: np.ndarray  # bool [K]
    occlusion: np.ndarray  # float32 [K]: the network's last (0 before its first result)
    uncertainty: np.ndarray  # float32 [K]: the network's last (1 before its first result)
    frames_since_network: np.ndarray  # int64 [K]: 0 on the network's own frame (-1: none yet)
    source: np.ndarray  # <U7 [K]: "network" or "lk", the track published


class _Points:
    """Per-point state, one row a point (id order)."""

    def __init__(self):
        self.ids = np.zeros(0, np.int64)
        self.net_xy = np.zeros((0, 2), np.float32)  # the network track
        self.net_visible = np.zeros(0, bool)
        self.occlusion = np.zeros(0, np.float32)
        self.uncertainty = np.zeros(0, np.float32)
        self.net_index = np.zeros(0, np.int64)  # frame of the last network result (-1: none)
        self.fused_xy = np.zeros((0, 2), np.float32)  # the last network result, on its own frame
        self.velocity = np.zeros((0, 2), np.float32)  # pixels a frame, from network results
        self.lk_xy = np.zeros((0, 2), np.float32)  # the LK track
        self.lk_alive = np.zeros(0, bool)

    FIELDS = ("ids", "net_xy", "net_visible", "occlusion", "uncertainty", "net_index", "fused_xy", "velocity",
              "lk_xy", "lk_alive")

    def keep(self, rows) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[rows])

    def append(self, **values) -> None:
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), values[name]]))
        self.keep(np.argsort(self.ids, kind="stable"))


class Propagator:
    """Carries points from frame to frame and fuses network results (see the module docstring).

    Frames are numbered by the caller (``advance(index, frame)``), in increasing order; a network
    result names the frame it was computed on (``fuse(index, ...)``), which may be older than the
    newest. Not thread-safe: one owner calls it (`tracking.realtime` holds a lock around it).
    """

    def __init__(self, config: Optional[PropagationConfig] = None):
        self.config = config or PropagationConfig()
        c = self.config
        self._lk = dict(winSize=(c.window_size, c.window_size), maxLevel=c.pyramid_levels,
                        criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.max_iterations, c.epsilon))
        self.reset()

    def reset(self) -> None:
        """Forget every point and frame."""
        self._frames: "OrderedDict[int, np.ndarray]" = OrderedDict()  # index -> grey image
        self._points = _Points()
        self._index: Optional[int] = None
        self._held: Optional[int] = None
        self.frame_size: Optional[Tuple[int, int]] = None
        self.counts = {"frames": 0, "fused": 0, "stale": 0}

    @property
    def index(self) -> Optional[int]:
        """The newest frame's index (None before the first)."""
        return self._index

    # ------------------------------------------------------------------ points
    def add(self, ids, xy) -> None:
        """Points that start on the newest frame at pixel positions ``xy`` [K, 2], visible."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        if len(ids) != len(xy):
            raise ValueError(f"{len(ids)} ids for {len(xy)} positions")
        if self._index is None:
            raise RuntimeError("points are added on a frame: call advance first")
        known = np.isin(ids, self._points.ids)
        if known.any():
            raise ValueError(f"points already tracked: {ids[known][:10].tolist()}")
        count = len(ids)
        self._points.append(ids=ids, net_xy=xy.copy(), net_visible=np.ones(count, bool),
                            occlusion=np.zeros(count, np.float32), uncertainty=np.ones(count, np.float32),
                            net_index=np.full(count, -1, np.int64), fused_xy=xy.copy(),
                            velocity=np.zeros((count, 2), np.float32),
                            lk_xy=xy.copy(), lk_alive=np.ones(count, bool))

    def hold(self, index: Optional[int]) -> None:
        """Keep frame ``index`` and every later one (up to ``max_held`` frames) until a result of
        that frame or a later one is fused, or the next hold: the frame a network step runs on, so
        that its result, however slow, can be fused. None keeps ``history`` frames only."""
        self._held = index

    def remove(self, ids) -> None:
        self._points.keep(~np.isin(self._points.ids, np.asarray(ids, np.int64).reshape(-1)))

    # ------------------------------------------------------------------ frames
    def advance(self, index: int, frame: np.ndarray) -> Estimate:
        """A new frame (uint8 [H, W, 3] RGB or [H, W] grey): every point carried into it.

        Returns the estimate for this frame. A frame of another size than the last restarts the
        image history (points keep their positions, scaled to the new size)."""
        grey = _grey(frame)
        if self._index is not None and index <= self._index:
            raise ValueError(f"frame {index} is not after frame {self._index}")
        size = grey.shape[:2]
        p = self._points
        if self.frame_size is not None and size != self.frame_size:
            scale = np.array([size[1] / self.frame_size[1], size[0] / self.frame_size[0]], np.float32)
            p.net_xy, p.lk_xy, p.velocity = p.net_xy * scale, p.lk_xy * scale, p.velocity * scale
            self._frames.clear()
        self.frame_size = size
        previous = self._frames.get(self._index) if self._index is not None else None
        if previous is not None and len(p.ids):
            every = np.ones(len(p.ids), bool)
            self._step(every, every, previous, grey)
        self._index = index
        self._frames[index] = grey
        while len(self._frames) > self.config.history:
            oldest = next(iter(self._frames))
            if self._held is not None and oldest >= self._held and len(self._frames) <= self.config.max_held:
                break
            self._frames.popitem(last=False)
        self.counts["frames"] += 1
        return self.estimate()

    def fuse(self, index: int, ids, xy, occlusion, uncertainty, visible, complete: bool = False) -> bool:
        """A network result computed on frame ``index``: rows ``ids`` with pixel ``xy`` of that frame,
        occlusion and uncertainty probabilities and the visibility the network decided.

        The points it names restart their network track from it, carried on to the newest frame;
        points it does not name (added after that frame, or removed) are left as they are. With
        ``complete`` the result names every point there is (the network adds and removes points
        itself, as in the node): points it names that are unknown here start from it, and points
        it does not name are dropped.
        Returns False (and changes nothing) when ``index`` is older than the frames kept."""
        if self._held is not None and index >= self._held:
            self._held = None
        if index not in self._frames:
            self.counts["stale"] += 1
            return False
        ids = np.asarray(ids, np.int64).reshape(-1)
        p = self._points
        new = np.zeros(0, np.int64)
        if complete:
            p.keep(np.isin(p.ids, ids))
            new = np.setdiff1d(ids, p.ids)
            if len(new):
                order = np.argsort(ids)
                rows = order[np.searchsorted(ids[order], new)]
                start = np.asarray(xy, np.float32).reshape(-1, 2)[rows]
                seen = np.asarray(visible, bool).reshape(-1)[rows]
                count = len(new)
                p.append(ids=new, net_xy=start.copy(), net_visible=np.ones(count, bool),
                         occlusion=np.zeros(count, np.float32), uncertainty=np.ones(count, np.float32),
                         net_index=np.full(count, -1, np.int64), fused_xy=start.copy(),
                         velocity=np.zeros((count, 2), np.float32), lk_xy=start.copy(), lk_alive=seen)
        rows_of = {int(i): r for r, i in enumerate(p.ids)}
        given = [(k, rows_of[int(i)]) for k, i in enumerate(ids) if int(i) in rows_of]
        if not given:
            return True
        k, rows = (np.array(v, np.int64) for v in zip(*given))
        xy = np.asarray(xy, np.float32).reshape(-1, 2)[k]
        # The point's own motion between its network results, for frames where LK fails.
        known = p.net_index[rows] >= 0
        span = (index - p.net_index[rows]).astype(np.float32)
        moving = known & (span > 0) & p.net_visible[rows] & np.asarray(visible, bool)[k]
        if moving.any():
            a = self.config.velocity_smoothing
            step = (xy[moving] - p.fused_xy[rows[moving]]) / span[moving, None]
            p.velocity[rows[moving]] = (1 - a) * p.velocity[rows[moving]] + a * step
        p.net_xy[rows] = xy
        p.net_visible[rows] = np.asarray(visible, bool).reshape(-1)[k]
        p.occlusion[rows] = np.asarray(occlusion, np.float32).reshape(-1)[k]
        p.uncertainty[rows] = np.asarray(uncertainty, np.float32).reshape(-1)[k]
        p.net_index[rows] = index
        p.fused_xy[rows] = xy
        selected = np.zeros(len(p.ids), bool)
        selected[rows] = True
        started = np.isin(p.ids, new)  # their LK track starts on this frame too
        frames = [i for i in self._frames if i >= index]
        for before, after in zip(frames, frames[1:]):
            self._step(selected, started, self._frames[before], self._frames[after])
        # Where the network is sure of a visible point whose LK track was lost, that restarts from it.
        sure = selected & ~p.lk_alive & p.net_visible & (p.uncertainty <= self.config.restart_uncertainty)
        p.lk_xy[sure] = p.net_xy[sure]
        p.lk_alive[sure] = True
        self.counts["fused"] += 1
        return True

    def estimate(self) -> Estimate:
        """What is published for the newest frame."""
        p = self._points
        trusted = p.uncertainty <= self.config.trust_uncertainty
        use_lk = ~trusted & p.lk_alive
        xy = np.where(use_lk[:, None], p.lk_xy, p.net_xy).astype(np.float32)
        visible = np.where(use_lk, True, p.net_visible)
        if self.frame_size is not None:
            height, width = self.frame_size
            visible = visible & (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
        since = np.where(p.net_index >= 0, (self._index or 0) - p.net_index, -1)
        return Estimate(p.ids.copy(), xy, visible, p.occlusion.copy(), p.uncertainty.copy(), since,
                        np.where(use_lk, "lk", "network").astype("<U7"))

    # ------------------------------------------------------------------ inside
    def _step(self, selected: np.ndarray, lk_selected: np.ndarray, previous: np.ndarray,
              current: np.ndarray) -> None:
        """One frame step of the selected points' network tracks (visible ones by LK, else by their
        velocity) and of the live LK tracks among lk_selected."""
        p = self._points
        net_rows = np.flatnonzero(selected & p.net_visible)
        lk_rows = np.flatnonzero(lk_selected & p.lk_alive)
        start = np.concatenate([p.net_xy[net_rows], p.lk_xy[lk_rows]])
        if len(start):
            moved, ok = self._lk_step(previous, current, start)
            net_moved, net_ok = moved[:len(net_rows)], ok[:len(net_rows)]
            p.net_xy[net_rows[net_ok]] = net_moved[net_ok]
            lost = net_rows[~net_ok]
            p.net_xy[lost] += p.velocity[lost]
            lk_moved, lk_ok = moved[len(net_rows):], ok[len(net_rows):]
            p.lk_xy[lk_rows[lk_ok]] = lk_moved[lk_ok]
            p.lk_alive[lk_rows[~lk_ok]] = False  # lost for good, as the baseline (until the network is sure)
        hidden = np.flatnonzero(selected & ~p.net_visible)
        p.net_xy[hidden] += p.velocity[hidden]

    def _lk_step(self, previous: np.ndarray, current: np.ndarray, xy: np.ndarray):
        start = (xy - 0.5).reshape(-1, 1, 2).astype(np.float32)
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, start, None, **self._lk)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **self._lk)
        moved, back = moved.reshape(-1, 2), back.reshape(-1, 2)
        error = np.linalg.norm(back - start.reshape(-1, 2), axis=-1)
        height, width = current.shape[:2]
        inside = (moved[:, 0] >= -0.5) & (moved[:, 0] < width - 0.5) & (moved[:, 1] >= -0.5) & (
            moved[:, 1] < height - 0.5)
        ok = ((status.ravel() == 1) & (back_status.ravel() == 1) & np.isfinite(moved).all(axis=1)
              & (error <= self.config.max_forward_backward_error) & inside)
        return moved + 0.5, ok


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"a frame must be [H, W, 3] RGB or [H, W] grey, got shape {frame.shape}")
