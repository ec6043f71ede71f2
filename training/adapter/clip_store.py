"""Clips of a live camera stream, kept as rosbag2 MCAP bags in a folder bounded in disk space.

The adapter (`bootstap_ros_training.adapter.node`) records what a robot's camera sees, so
that bootstrapping rounds (`bootstap_ros_training.adapter.adaptation`) have fresh unlabelled clips of the
domain the tracker works in. Two parts, neither needs ROS:

* `ClipRecorder` takes the camera's messages as they come off the wire: serialized
  CDR bytes (what an rclpy subscription with ``raw=True`` and a rosbag2 bag both
  hold), the message type and the receive time. It cuts the stream with the
  bootstrapping clip filters (`bootstap_ros_training.clips.ClipBuilder`: no time gap, no scene cut,
  no static stretch) and hands every accepted clip's messages, unchanged, to the store.
  After a clip it waits `interval_s` of stream time before it looks for the next one:
  clips spread over time are worth more to training than a continuous recording, and
  the frames in between cost nothing (they are not even deserialized).
* `ClipStore` writes each clip as its own bag, ``clips/clip_<n>/`` (``metadata.yaml``
  and one ``.mcap`` file holding the messages as received, with their receive times),
  so the store is also an ordinary robot log: ``ros2 bag info``, ``ros2 bag play``,
  `bootstap-prepare-logs` and `bootstap_ros_training.logs` read it. A bag is written in
  ``clips/.writing/`` and renamed into place when complete: a killed process never
  leaves a half bag among the clips.

Bounds: the clips together stay within `max_bytes`; to make room the oldest clips go
first, except those pinned (`pinned`: a bootstrapping round is reading them). The
filesystem keeps `min_free_bytes` free for everything else on the robot. A clip that
would break either bound, or a write that fails (a full disk, an I/O error), stops
recording with a warning (`warn`); the store looks again `retry_s` later and records
again once there is room. The caller keeps running either way.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..clips import Clip, ClipBuilder, ClipConfig, ClipStats

LOG = logging.getLogger(__name__)

CLIPS = "clips"
WRITING = ".writing"
_CLIP_NAME = re.compile(r"^clip_(\d{6,})$")
#: Bytes a bag takes beyond its messages (MCAP header and summary, metadata.yaml), with a
#: margin: about 3 KiB and 40 bytes a message were measured with rosbags 0.11.
BAG_OVERHEAD, MESSAGE_OVERHEAD = 16 << 10, 128


@dataclass(frozen=True)
class StoredClip:
    """One clip in the store: its bag folder and what it holds."""

    number: int       # increasing over the store's life: a later clip has a larger number
    path: Path        # the bag folder
    bytes: int        # its size on disk
    frames: int
    start_ns: int = 0  # header stamps of its first and last frame (0 when not known)
    end_ns: int = 0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ClipStore:
    """The bag folders of `folder`/clips, oldest first, within the bounds (see the module
    docstring). Thread-safe: a recorder adds clips while a round pins and reads them."""

    def __init__(self, folder, max_bytes: int, min_free_bytes: int = 0, retry_s: float = 60.0,
                 warn: Callable[[str], None] = LOG.warning,
                 disk_usage: Callable[[str], Tuple[int, int, int]] = shutil.disk_usage,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder).expanduser()
        self.clips_folder = self.folder / CLIPS
        self.max_bytes, self.min_free_bytes, self.retry_s = int(max_bytes), int(min_free_bytes), retry_s
        self._warn, self._disk_usage, self._clock = warn, disk_usage, clock
        self._lock = threading.Lock()
        self._pins: Dict[int, int] = {}  # clip number -> how many holders
        self.stopped: Optional[str] = None  # why recording stopped, None while it records
        self._retry_at = 0.0
        self.written = 0   # clips written since start
        self.deleted = 0   # clips deleted to make room
        self.clips_folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.clips_folder / WRITING, ignore_errors=True)  # a bag cut short by a kill
        self._clips: List[StoredClip] = self._scan()
        self._next = self._clips[-1].number + 1 if self._clips else 1

    def _scan(self) -> List[StoredClip]:
        found = []
        for path in self.clips_folder.iterdir():
            match = _CLIP_NAME.match(path.name)
            if match and path.is_dir():
                found.append(StoredClip(int(match.group(1)), path, folder_bytes(path), _frames_of(path)))
        return sorted(found, key=lambda clip: clip.number)

    # ------------------------------------------------------------------ reading
    @property
    def clips(self) -> List[StoredClip]:
        with self._lock:
            return list(self._clips)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(clip.bytes for clip in self._clips)

    @contextmanager
    def pinned(self, clips: Iterable[StoredClip]) -> Iterator[None]:
        """While inside, these clips are never deleted to make room (a round reads them)."""
        numbers = [clip.number for clip in clips]
        with self._lock:
            for number in numbers:
                self._pins[number] = self._pins.get(number, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for number in numbers:
                    self._pins[number] -= 1
                    if not self._pins[number]:
                        del self._pins[number]

    # ------------------------------------------------------------------ writing
    @property
    def recording(self) -> bool:
        """False while recording is stopped; True again once `retry_s` passed (the next clip
        then tries again)."""
        return self.stopped is None or self._clock() >= self._retry_at

    def _stop(self, reason: str) -> None:
        first = self.stopped is None
        self.stopped, self._retry_at = reason, self._clock() + self.retry_s
        self._warn(f"clip recording stopped: {reason}; tracking is not affected. Trying again in "
                   f"{self.retry_s:.0f} s" if first else f"clip recording still stopped: {reason}")

    def add(self, topic: str, msgtype: str, messages: Sequence[Tuple[int, bytes]],
            start_ns: int = 0, end_ns: int = 0) -> Optional[StoredClip]:
        """Writes one clip: `messages` are (receive time ns, CDR bytes) of `topic`'s `msgtype`.
        Returns the stored clip, or None when it was not written (a warning says why)."""
        if not self.recording:
            return None
        need = sum(len(data) + MESSAGE_OVERHEAD for _, data in messages) + BAG_OVERHEAD
        with self._lock:
            if need > self.max_bytes:
                self._stop(f"a clip takes {need / 2**20:.1f} MiB, more than the store's bound "
                           f"max_disk_mb ({self.max_bytes / 2**20:.0f} MiB)")
                return None
            self._make_room(need)
            used = sum(clip.bytes for clip in self._clips)
            if used + need > self.max_bytes:
                self._stop(f"the store is full ({used / 2**20:.0f} of {self.max_bytes / 2**20:.0f} MiB) "
                           f"and its oldest clips are in use by a bootstrapping round")
                return None
            try:
                free = self._disk_usage(str(self.clips_folder))[2]
            except OSError as error:
                self._stop(f"cannot read the free disk space of {self.clips_folder}: {error}")
                return None
            if free - need < self.min_free_bytes:
                self._stop(f"the disk is full: {free / 2**20:.0f} MiB free on {self.clips_folder}, "
                           f"and min_free_disk_mb keeps {self.min_free_bytes / 2**20:.0f} MiB free")
                return None
            number = self._next
            self._next += 1
        name = f"clip_{number:06d}"
        staging = self.clips_folder / WRITING / name
        try:
            staging.parent.mkdir(parents=True, exist_ok=True)
            _write_bag(staging, topic, msgtype, messages)
            path = self.clips_folder / name
            os.replace(staging, path)
            size = folder_bytes(path)
        except Exception as error:  # noqa: BLE001 - OSError, rosbags' writer errors: all stop it
            shutil.rmtree(staging, ignore_errors=True)
            with self._lock:
                self._stop(f"writing {name} failed: {type(error).__name__}: {error}")
            return None
        clip = StoredClip(number, path, size, len(messages), start_ns, end_ns)
        with self._lock:
            self._clips.append(clip)
            self.written += 1
            if self.stopped is not None:
                LOG.info("clip recording resumed (%s)", self.stopped)
                self.stopped = None
        return clip

    def _make_room(self, need: int) -> None:
        """Deletes the oldest unpinned clips until `need` more bytes fit (lock held)."""
        used = sum(clip.bytes for clip in self._clips)
        for clip in list(self._clips):
            if used + need <= self.max_bytes:
                return
            if clip.number in self._pins:
                continue
            shutil.rmtree(clip.path, ignore_errors=True)
            self._clips.remove(clip)
            used -= clip.bytes
            self.deleted += 1

    def set_bounds(self, max_bytes: Optional[int] = None, min_free_bytes: Optional[int] = None) -> None:
        with self._lock:
            if max_bytes is not None:
                self.max_bytes = int(max_bytes)
            if min_free_bytes is not None:
                self.min_free_bytes = int(min_free_bytes)
            self._retry_at = 0.0  # new bounds: the next clip tries at once


@functools.lru_cache(maxsize=1)
def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)  # Image and CompressedImage: the same in every distro


def image_message(frame, stamp_ns: int, frame_id: str = "camera") -> bytes:
    """A uint8 RGB frame [H, W, 3] as a serialized sensor_msgs/Image (CDR bytes, rgb8), as a
    camera driver publishes it: to feed a `ClipRecorder` without ROS."""
    import numpy as np

    types = _typestore().types
    height, width = frame.shape[:2]
    msg = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](
            sec=int(stamp_ns) // 10**9, nanosec=int(stamp_ns) % 10**9), frame_id=frame_id),
        height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
        data=np.ascontiguousarray(frame, dtype=np.uint8).reshape(-1))
    return bytes(_typestore().serialize_cdr(msg, "sensor_msgs/msg/Image"))


def _write_bag(path: Path, topic: str, msgtype: str, messages: Sequence[Tuple[int, bytes]]) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    with writer:
        connection = writer.add_connection(topic, msgtype, typestore=_typestore())
        for receive_ns, data in messages:
            writer.write(connection, int(receive_ns), data)


def _frames_of(path: Path) -> int:
    """Messages in a bag folder, from its metadata.yaml (0 when it cannot be read)."""
    import yaml

    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return int(info["message_count"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return 0


@dataclass
class RecorderStats:
    """What the recorder saw: the clip filters' counts over every window, and the clips kept."""

    filters: ClipStats = field(default_factory=ClipStats)
    decode_errors: int = 0  # messages that could not be deserialized or decoded
    kept: int = 0           # clips written to the store
    not_written: int = 0    # clips the store refused (full, disk full, write error)


class ClipRecorder:
    """Feeds a stream of serialized image messages through the clip filters into a store.

    `add(data, msgtype, receive_ns)` for every message, in arrival order; `topic` is the
    name the bags give the stream. Only `clip_config.frames` consecutive frames make a
    clip (every frame is sampled: a clip is the stream as it came).
    """

    def __init__(self, store: ClipStore, topic: str, frames: int = 24, interval_s: float = 10.0,
                 clip_config: Optional[ClipConfig] = None):
        config = clip_config or ClipConfig(frames=frames)
        if config.stride != 1 or config.fps is not None:
            raise ValueError("the recorder keeps every frame of a clip: stride 1 and no fps")
        self.store, self.topic, self.config = store, topic, config
        self.interval_ns = int(interval_s * 1e9)
        self.stats = RecorderStats()
        self._builder: Optional[ClipBuilder] = None
        self._recent: Deque[Tuple[int, int, bytes]] = deque(maxlen=config.frames)  # (index, receive, data)
        self._index = -1
        self._msgtype: Optional[str] = None
        self._next_ns = 0  # the first receive time at which the next clip may start
        self._finished: List[Clip] = []

    def add(self, data: bytes, msgtype: str, receive_ns: int) -> Optional[StoredClip]:
        """One message; returns the clip it completed and stored, if any."""
        if receive_ns < self._next_ns or not self.store.recording:
            if self._builder is not None:  # the window closed: what it holds is dropped
                self._close_window()
            return None
        if self._builder is None or msgtype != self._msgtype:
            if self._builder is not None:
                self._close_window()
            self._builder, self._msgtype, self._index = ClipBuilder(self.config, self._finished.append), msgtype, -1
            self._recent.clear()
        try:
            msg = _typestore().deserialize_cdr(data, msgtype)
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        except Exception:  # noqa: BLE001 - a message rosbags cannot read: the stream splits there
            self.stats.decode_errors += 1
            self._builder.split()
            return None
        self._index += 1
        self._recent.append((self._index, receive_ns, data))
        from bootstap_ros.images import message_to_rgb

        errors = self._builder.stats.bad_frames
        self._builder.add(stamp_ns, receive_ns, lambda: message_to_rgb(msg))
        self.stats.decode_errors += self._builder.stats.bad_frames - errors
        if not self._finished:
            return None
        clip = self._finished.pop()
        messages = [(receive, raw) for index, receive, raw in self._recent
                    if clip.first_index <= index <= clip.last_index]
        self._close_window()
        self._next_ns = receive_ns + self.interval_ns
        stored = self.store.add(self.topic, msgtype, messages, clip.start_ns, clip.end_ns)
        if stored is None:
            self.stats.not_written += 1
        else:
            self.stats.kept += 1
        return stored

    def _close_window(self) -> None:
        """Adds the finished window's filter counts to the totals and drops its frames."""
        stats, totals = self._builder.stats, self.stats.filters
        for name in ("frames", "sampled", "gaps", "cuts", "static_dropped", "bad_frames", "clips"):
            setattr(totals, name, getattr(totals, name) + getattr(stats, name))
        self._builder = None
        self._recent.clear()
        self._finished.clear()
