"""The tracking engine: CausalTracker (online, per-point state) and whole-clip helpers."""

from bootstap_ros.tracking.clip import ClipTracks, track_offline, track_online
from bootstap_ros.tracking.frames import ENCODINGS, FrameError, to_rgb
from bootstap_ros.tracking.tracker import CausalTracker, TrackerFullError, TrackResult

__all__ = [
    "CausalTracker", "TrackResult", "TrackerFullError", "ClipTracks", "track_online",
    "track_offline", "ENCODINGS", "FrameError", "to_rgb",
]
