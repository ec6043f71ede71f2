"""Robot logs as training clips: rosbag2 bags, videos and image folders, decoded once.

`prepare_logs` (the ``bootstap-prepare-logs`` command) reads each input,
cuts it into clips (`bootstap_ros_training.clips`: length, sampling, size, and the static /
scene-cut / time-gap rules) and writes every clip as a uint8 ``.npy`` array
``[T, S, S, 3]`` RGB under the output folder, with ``manifest.json``. `LogClips`
is the Dataset a training loop reads from that manifest.

Inputs:

* rosbag2 bags (a folder with ``metadata.yaml``, or a bare ``.mcap`` / ``.db3``
  file), MCAP or SQLite3 storage, read with `rosbags` (no ROS install needed);
  an MCAP file cut short (a killed recording, which rosbags cannot open) is
  read up to the cut with `bootstap_ros_training.mcap_salvage`.
  sensor_msgs/Image and sensor_msgs/CompressedImage are decoded with
  `bootstap_ros.images`, the node's own conversions. The topic is
  ``image_topic``, or the bag's only image topic; several image topics and no
  choice is an error that lists them with their types.
* video files and image folders (and ``.npy`` arrays), read with
  `bootstap_ros.video`.
* any other folder: the inputs found inside it, in name order.

A bag or video that cannot be read is skipped with a warning that names it;
a bag that breaks part-way keeps the clips decoded before the damage and the
warning says so. A missing path, or a bag with several image topics and no
``image_topic``, is an error raised before anything is decoded.

Cache: each input's clips go to ``clips/<key>/``, where the key hashes the
input's path, its files' sizes and modification times, the topic and the
`ClipConfig`; ``source.json`` there marks the input as done. Preparing again
reuses every finished input (no decoding), decodes only new or changed ones,
resumes an interrupted run at the input it was on, and deletes clip folders no
longer referenced. The clip order is the input order, so a manifest is a
deterministic function of its inputs and config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .clips import Clip, ClipBuilder, ClipConfig, ClipStats
from .mcap_salvage import TruncatedMcap

__all__ = ["ClipConfig", "LogClips", "LogError", "prepare_logs", "write_image_bag",
           "image_topics", "main"]

LOG = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "bootstap-log-clips"
MANIFEST_VERSION = 1
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
BAG_SUFFIXES = (".mcap", ".db3")
_KEY = re.compile(r"^[0-9a-f]{16}$")


class LogError(ValueError):
    """An input or an option that cannot be used; the message says what to do."""


# ---------------------------------------------------------------------------- inputs

@dataclass
class LogInput:
    """One input: a bag, a video file, an image folder or a .npy array."""

    path: Path
    kind: str  # "bag", "video" (video files and .npy arrays) or "folder"
    topic: Optional[str] = None  # bags: the image topic to read (resolved before decoding)
    topic_type: Optional[str] = None
    file_by_file: bool = False  # bags that open only file by file (one file damaged)

    def files(self) -> List[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    def fingerprint(self) -> List[Tuple[str, int, int]]:
        """(relative name, size, mtime_ns) of every file the input is made of."""
        entries = []
        for file in self.files():
            stat = file.stat()
            name = file.name if file == self.path else str(file.relative_to(self.path))
            entries.append((name, stat.st_size, stat.st_mtime_ns))
        return entries


def _is_bag_folder(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or any(
        p.suffix in BAG_SUFFIXES for p in path.iterdir() if p.is_file())


def find_inputs(paths: Sequence, exclude: Optional[Path] = None) -> List[LogInput]:
    """The inputs named by `paths`, folders of inputs expanded in name order.

    `exclude` (the cache folder, which may sit inside an input folder) is never
    an input; an input named twice counts once.
    """
    from bootstap_ros.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_sort_key

    found: List[LogInput] = []
    seen = set()

    def visit(path: Path, explicit: bool) -> None:
        if path == exclude or path in seen:
            return
        seen.add(path)
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix in BAG_SUFFIXES:
                found.append(LogInput(path, "bag"))
            elif suffix in VIDEO_SUFFIXES or suffix == ".npy":
                found.append(LogInput(path, "video"))
            elif explicit:
                raise LogError(
                    f"{path}: unsupported input '{suffix}'; expected a rosbag2 bag (a folder "
                    f"with metadata.yaml, or {', '.join(BAG_SUFFIXES)}), a video "
                    f"({', '.join(VIDEO_SUFFIXES)}), a .npy array or a folder of images")
            return
        if _is_bag_folder(path):
            found.append(LogInput(path, "bag"))
            return
        children = sorted(path.iterdir(), key=lambda p: natural_sort_key(p.name))
        if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in children):
            found.append(LogInput(path, "folder"))
            return
        before = len(found)
        for child in children:
            if child.is_dir() or child.suffix.lower() in BAG_SUFFIXES + VIDEO_SUFFIXES + (".npy",):
                visit(child, explicit=False)
        if explicit and len(found) == before:
            raise LogError(f"{path}: folder holds no bag, video or images")

    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise LogError(f"{path}: no such file or folder (expected a bag, a video file or "
                           "an image folder)")
        visit(path.resolve(), explicit=True)
    return found


# ---------------------------------------------------------------------------- bags

def _typestore():
    from rosbags.typesys import Stores, get_typestore

    # sensor_msgs/Image and CompressedImage are the same in every ROS 2 distro.
    return get_typestore(Stores.ROS2_HUMBLE)


def _storage_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    from bootstap_ros.video import natural_sort_key

    return sorted((p for p in path.iterdir() if p.is_file() and p.suffix in BAG_SUFFIXES),
                  key=lambda p: natural_sort_key(p.name))


def image_topics(path) -> Dict[str, str]:
    """{topic: message type} of the image topics of a bag (raises when it cannot be opened)."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


def _file_image_topics(file: Path) -> Dict[str, str]:
    """`image_topics` of one storage file; an MCAP file that rosbags cannot open (cut short)
    is read from its start as far as it goes (`mcap_salvage`)."""
    try:
        return image_topics(file)
    except Exception:  # noqa: BLE001 - ReaderError, apsw errors, OSError, KeyError, ...
        if file.suffix != ".mcap":
            raise
    topics = TruncatedMcap(file).topics()
    return {topic: msgtype for topic, msgtype in topics.items() if msgtype in IMAGE_TYPES}


def _bag_topics(path: Path) -> Tuple[Dict[str, str], Optional[str], bool]:
    """(image topics, why the bag cannot be opened or None, read file by file).

    A bag that cannot be opened as a whole (e.g. one of its split files is
    truncated, or metadata.yaml is missing because the recording was killed) is
    tried file by file, a cut-short MCAP file up to its cut.
    """
    try:
        return image_topics(path), None, False
    except Exception as error:  # noqa: BLE001 - ReaderError, apsw errors, OSError, KeyError, ...
        whole_error = f"{type(error).__name__}: {error}"
    topics: Dict[str, str] = {}
    for file in _storage_files(path):
        try:
            topics.update(_file_image_topics(file))
        except Exception:  # noqa: BLE001 - the bag's error is reported instead
            continue
    return topics, (None if topics else whole_error), True


def _choose_topic(path: Path, topics: Mapping[str, str], image_topic: Optional[str]
                  ) -> Tuple[Optional[str], Optional[str]]:
    """(topic, None), or (None, reason to skip); several candidates raise LogError."""
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "none"
    if image_topic is not None:
        if image_topic in topics:
            return image_topic, None
        return None, f"has no image topic '{image_topic}' (its image topics: {listing})"
    if not topics:
        return None, "has no sensor_msgs/Image or CompressedImage topic"
    if len(topics) > 1:
        raise LogError(f"{path}: several image topics, choose one with --image-topic "
                       f"(image_topic=...): {listing}")
    return next(iter(topics)), None


def _read_bag(source: LogInput, builder: ClipBuilder) -> Optional[str]:
    """Feeds the bag's frames to `builder`; returns None, or what went wrong."""
    from rosbags.rosbag2 import Reader

    from bootstap_ros.images import message_to_rgb

    typestore = _typestore()

    def add(raw: bytes, msgtype: str, receive_ns: int) -> None:
        msg = typestore.deserialize_cdr(raw, msgtype)
        stamp = msg.header.stamp
        builder.add(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), int(receive_ns),
                    lambda: message_to_rgb(msg))

    targets = _storage_files(source.path) if source.file_by_file else [source.path]
    problems: List[str] = []
    for target in targets:
        opened = False
        try:
            with Reader(target) as reader:
                opened = True
                connections = [c for c in reader.connections if c.topic == source.topic]
                for connection, receive_ns, raw in reader.messages(connections=connections):
                    add(raw, connection.msgtype, receive_ns)
        except Exception as error:  # noqa: BLE001 - a damaged bag must not stop the run
            problem = f"{target.name}: {type(error).__name__}: {error}"
            if not opened and target.suffix == ".mcap":  # cut short: read it up to the cut
                problem = _read_cut_mcap(target, source.topic, add, problem)
            problems.append(problem)
        builder.split()  # no clip spans two files, nor the damage
    return "; ".join(problems) or None


def _read_cut_mcap(path: Path, topic: str, add, problem: str) -> str:
    """Feeds `add` the messages of `topic` in an MCAP file that rosbags could not open (the
    reason: `problem`); returns what went wrong, with how far the file was read."""
    try:
        cut = TruncatedMcap(path)
        count = 0
        for channel, receive_ns, raw in cut.messages(topic):
            add(raw, channel.msgtype, receive_ns)
            count += 1
    except Exception as error:  # noqa: BLE001 - not even its start can be read
        return f"{problem}; read from its start: {type(error).__name__}: {error}"
    return (f"{problem}; cut short: {count} message(s) of {topic} read from its first "
            f"{cut.complete_bytes} of {cut.file_bytes} bytes")


def _read_video(source: LogInput, builder: ClipBuilder, config: ClipConfig) -> Optional[str]:
    """Feeds a video's (or image folder's) frames to `builder`; returns None or the problem."""
    from bootstap_ros.video import _read_image, open_video

    try:
        video = open_video(source.path)
        period = 1e9 / (video.fps or config.folder_fps)
        if source.kind == "folder":
            # One file per frame: decode only the sampled ones; an unreadable
            # image is a bad frame, not the end of the folder.
            for index, file in enumerate(video.files):
                stamp = int(round(index * period))
                builder.add(stamp, stamp, lambda file=file: _read_image(file))
        else:
            for index, frame in enumerate(video):
                stamp = int(round(index * period))
                builder.add(stamp, stamp, lambda frame=frame: frame)
    except Exception as error:  # noqa: BLE001 - an unreadable video must not stop the run
        return f"{type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------- cache

def _source_key(source: LogInput, config: ClipConfig) -> str:
    blob = json.dumps({"path": str(source.path), "kind": source.kind, "topic": source.topic,
                       "files": source.fingerprint(), "config": config.to_dict(),
                       "format": MANIFEST_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_done(folder: Path) -> Optional[Dict]:
    """The source record of a finished input folder, or None if absent or incomplete."""
    try:
        record = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((folder / clip["file"]).is_file() for clip in record.get("clips", [])):
        return None
    return record


def _write_json(path: Path, data) -> None:
    """Written to a temporary file and renamed, so a killed run leaves no half file.

    The temporary name is unique, so processes preparing the same cache at once
    (the ranks of a distributed run) never write into each other's file; a file
    that already holds `data` is left alone.
    """
    text = json.dumps(data, indent=1)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _decode_source(source: LogInput, folder: Path, config: ClipConfig) -> Dict:
    """Decodes one input into `folder`; returns its source record."""
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted earlier attempt
    folder.mkdir(parents=True)
    clips: List[Dict] = []

    def emit(clip: Clip) -> None:
        name = f"clip_{len(clips):06d}.npy"
        temporary = folder / (name + ".tmp")
        with open(temporary, "wb") as handle:
            np.save(handle, clip.video)
        os.replace(temporary, folder / name)
        clips.append({"file": name, "start_ns": clip.start_ns, "end_ns": clip.end_ns,
                      "first_frame": clip.first_index, "last_frame": clip.last_index})
        if len(clips) % 100 == 0:  # a sign of life on long logs
            LOG.info("%s: %d clips so far (%d frames read)", source.path, len(clips),
                     builder.stats.frames)

    builder = ClipBuilder(config, emit)
    if source.kind == "bag":
        problem = _read_bag(source, builder)
    else:
        problem = _read_video(source, builder, config)
    status = "ok"
    if problem is not None:
        status = "partial" if builder.stats.frames else "skipped"
    record = {"path": str(source.path), "kind": source.kind, "topic": source.topic,
              "topic_type": source.topic_type, "files": source.fingerprint(),
              "status": status, "problem": problem, "bad_frame": builder.first_error,
              "stats": builder.stats.to_dict(), "clips": clips}
    _write_json(folder / "source.json", record)
    return record


def _warn(record: Dict) -> None:
    path, stats = record["path"], record["stats"]
    if record["status"] == "skipped":
        LOG.warning("skipped %s: %s", path, record["problem"])
    elif record["status"] == "partial":
        LOG.warning("%s is damaged (%s); partly read: kept the %d clip(s) from the %d frame(s) "
                    "read before the damage", path, record["problem"], len(record["clips"]),
                    stats["frames"])
    if stats.get("bad_frames"):
        LOG.warning("%s: %d frame(s) could not be decoded and were left out, first: %s",
                    path, stats["bad_frames"], record["bad_frame"])


def prepare_logs(paths: Sequence, out_dir, config: ClipConfig = ClipConfig(),
                 image_topic: Optional[str] = None) -> Path:
    """Decodes `paths` into clips under `out_dir`; returns the manifest's path.

    Reuses every input already decoded with the same files, topic and config.
    Raises LogError for a missing path, for a bag with several image topics
    when `image_topic` is None, and when no input gives a single clip.
    """
    out_dir = Path(out_dir)
    inputs = find_inputs(paths, exclude=out_dir.resolve())
    if not inputs:
        raise LogError(f"no inputs given ({list(paths)})")
    clip_root = out_dir / "clips"
    # Folders this call makes: a call that gives no clip removes them again, so a failed run
    # leaves no empty clips/clips/ behind.
    created = [folder for folder in (out_dir, clip_root) if not folder.exists()]
    clip_root.mkdir(parents=True, exist_ok=True)

    # Topics first, so a bag with several image topics stops the run before any decoding.
    unreadable: Dict[int, str] = {}
    for number, source in enumerate(inputs):
        if source.kind != "bag":
            continue
        topics, error, source.file_by_file = _bag_topics(source.path)
        if error is not None:
            unreadable[number] = f"rosbags cannot open it ({error}); nothing from it is used"
            continue
        source.topic, reason = _choose_topic(source.path, topics, image_topic)
        if reason is not None:
            unreadable[number] = reason
        else:
            source.topic_type = topics[source.topic]

    records: List[Dict] = []
    reused = 0
    for number, source in enumerate(inputs):
        if number in unreadable:
            record = {"path": str(source.path), "kind": source.kind, "topic": None,
                      "topic_type": None, "files": source.fingerprint(), "status": "skipped",
                      "problem": unreadable[number], "bad_frame": None,
                      "stats": ClipStats().to_dict(), "clips": [], "key": None}
            _warn(record)
            records.append(record)
            continue
        key = _source_key(source, config)
        folder = clip_root / key
        record = _load_done(folder)
        if record is None:
            LOG.info("decoding %s%s", source.path, f" ({source.topic})" if source.topic else "")
            record = _decode_source(source, folder, config)
            _warn(record)
        else:
            reused += 1
            _warn(record)
        record["key"] = key
        records.append(record)
        LOG.info("%s: %d clip(s) (%s)", source.path, len(record["clips"]), ", ".join(
            f"{name} {value}" for name, value in record["stats"].items() if value))

    keys = {record["key"] for record in records}
    for folder in clip_root.iterdir():  # clips of old configs or changed inputs
        if folder.is_dir() and _KEY.match(folder.name) and folder.name not in keys:
            shutil.rmtree(folder)

    clips = [dict(clip, file=f"clips/{record['key']}/{clip['file']}", source=record["path"],
                  topic=record["topic"])
             for record in records for clip in record["clips"]]
    if not clips:
        for folder in reversed(created):
            shutil.rmtree(folder, ignore_errors=True)
        reasons = "; ".join(f"{r['path']}: {r['problem'] or 'too short or all static'} "
                            f"({r['stats']['frames']} frames)" for r in records)
        raise LogError(f"no clip of {config.frames} frames could be made from the inputs: "
                       f"{reasons}")
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "config": config.to_dict(), "image_topic": image_topic,
        "sources": [{k: v for k, v in record.items() if k != "clips"} | {
            "clips": len(record["clips"])} for record in records],
        "clips": clips,
    }
    path = out_dir / MANIFEST
    _write_json(path, manifest)
    LOG.info("%d clip(s) from %d input(s) (%d reused from the cache) -> %s",
             len(clips), len(records), reused, path)
    return path


# ---------------------------------------------------------------------------- dataset

class LogClips:
    """The clips of a manifest as a torch Dataset: ``{"video": uint8 [T, S, S, 3] RGB, "index": i}``.

    `clip_info(i)` gives the clip's source, topic and stamps.
    """

    def __init__(self, manifest_path):
        self.manifest_path = Path(manifest_path)
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise LogError(f"{self.manifest_path}: not a readable clip manifest ({error}); "
                           "make one with bootstap-prepare-logs") from None
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
            raise LogError(f"{self.manifest_path}: expected a {MANIFEST_FORMAT} manifest version "
                           f"{MANIFEST_VERSION}, found {manifest.get('format')!r} version "
                           f"{manifest.get('version')!r}; run bootstap-prepare-logs again")
        self.config = ClipConfig(**manifest["config"])
        self.clips = manifest["clips"]
        self.sources = manifest["sources"]
        self.root = self.manifest_path.parent

    def __len__(self) -> int:
        return len(self.clips)

    def clip_info(self, index: int) -> Dict:
        return self.clips[index]

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        file = self.root / self.clips[index]["file"]
        video = np.load(file, allow_pickle=False)
        expected = (self.config.frames, self.config.size, self.config.size, 3)
        if video.dtype != np.uint8 or video.shape != expected:
            raise LogError(f"{file}: expected uint8 {expected}, found {video.dtype} "
                           f"{video.shape}; run bootstap-prepare-logs again")
        return {"video": video, "index": index}


# ---------------------------------------------------------------------------- writing bags

def write_image_bag(path, frames: np.ndarray, stamps_ns: Sequence[int],
                    topic: str = "/camera/image_raw", storage: str = "mcap",
                    compressed: bool = False, frame_id: str = "camera", encoding: str = "rgb8",
                    format: str = "jpeg", quality: int = 95,
                    receive_stamps_ns: Optional[Sequence[int]] = None,
                    extra_topics: Optional[Mapping[str, str]] = None,
                    compression: Optional[str] = None) -> Path:
    """Writes uint8 RGB frames [T, H, W, 3] as a rosbag2 bag (folder `path`, must not exist).

    storage: "mcap" or "sqlite3". Raw frames are sensor_msgs/Image in `encoding`
    ("rgb8" or "bgr8"); with `compressed`, sensor_msgs/CompressedImage in `format`
    ("jpeg" at `quality`, or "png"). Header stamps are `stamps_ns`; the bag's
    receive stamps are `receive_stamps_ns` (default: the same). `extra_topics`
    maps more topics to "image", "compressed" (the same frames) or "string"
    (std_msgs/String), to make bags with several topics. `compression`: None, or
    "file" / "message" for rosbag2's zstd compression of whole files or of each message,
    or "storage" for MCAP's own zstd compression of its chunks (the default of the mcap
    writer that `ros2 bag record -s mcap` uses)."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    from bootstap_ros.images import encode_compressed

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise LogError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
    modes = {None: None, "file": CompressionMode.FILE, "message": CompressionMode.MESSAGE,
             "storage": CompressionMode.STORAGE}
    if compression not in modes:
        raise LogError(f"compression must be None, 'file', 'message' or 'storage', got {compression!r}")
    if encoding not in ("rgb8", "bgr8"):
        raise LogError(f"encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise LogError(f"frames must be uint8 [T, H, W, 3] RGB, got {frames.dtype} "
                       f"{frames.shape}")
    stamps = [int(s) for s in stamps_ns]
    receive = stamps if receive_stamps_ns is None else [int(s) for s in receive_stamps_ns]
    if not len(stamps) == len(receive) == len(frames):
        raise LogError(f"{len(frames)} frames need as many stamps, got {len(stamps)} header "
                       f"and {len(receive)} receive stamps")
    kinds = {topic: "compressed" if compressed else "image", **dict(extra_topics or {})}
    bad = {t: k for t, k in kinds.items() if k not in ("image", "compressed", "string")}
    if bad:
        raise LogError(f"extra_topics kinds must be 'image', 'compressed' or 'string': {bad}")

    typestore = _typestore()
    types = typestore.types
    msgtypes = {"image": "sensor_msgs/msg/Image", "compressed": "sensor_msgs/msg/CompressedImage",
                "string": "std_msgs/msg/String"}

    def message(kind: str, index: int):
        stamp = stamps[index]
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000,
                                                        nanosec=stamp % 1_000_000_000),
            frame_id=frame_id)
        if kind == "string":
            return types["std_msgs/msg/String"](data=f"frame {index}")
        if kind == "compressed":
            data = np.frombuffer(encode_compressed(frames[index], "rgb8", format, quality),
                                 np.uint8)
            return types["sensor_msgs/msg/CompressedImage"](header=header, format=format,
                                                             data=data)
        pixels = frames[index] if encoding == "rgb8" else frames[index][..., ::-1]
        height, width = pixels.shape[:2]
        return types["sensor_msgs/msg/Image"](
            header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
            step=width * 3, data=np.ascontiguousarray(pixels).reshape(-1))

    path = Path(path)
    writer = Writer(path, version=8, storage_plugin=plugins[storage])
    if compression is not None:
        writer.set_compression(modes[compression], CompressionFormat.ZSTD)
    with writer:
        connections = {t: writer.add_connection(t, msgtypes[k], typestore=typestore)
                       for t, k in kinds.items()}
        for index in range(len(frames)):
            for name, kind in kinds.items():
                msgtype = msgtypes[kind]
                writer.write(connections[name], receive[index],
                             typestore.serialize_cdr(message(kind, index), msgtype))
    return path


# ---------------------------------------------------------------------------- command

def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = ClipConfig()
    parser = argparse.ArgumentParser(
        prog="bootstap-prepare-logs",
        description="Decode robot logs (rosbag2 bags, MCAP or SQLite3, Image or "
                    "CompressedImage topics), video files and image folders into training "
                    "clips with a manifest. Inputs already decoded with the same settings "
                    "are reused.")
    parser.add_argument("paths", nargs="+", help="bags (folder or .mcap/.db3), video files, "
                        "image folders, or folders holding them")
    parser.add_argument("--output", required=True, help="cache folder (manifest.json, clips/)")
    parser.add_argument("--image-topic", default=None, help="image topic to read from bags "
                        "(default: the bag's only image topic)")
    parser.add_argument("--frames", type=int, default=defaults.frames,
                        help="frames per clip (default %(default)s)")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--stride", type=int, default=defaults.stride,
                          help="keep every S-th frame (default %(default)s)")
    sampling.add_argument("--fps", type=float, default=None,
                          help="resample to this frame rate by the stamps instead of a stride")
    parser.add_argument("--size", type=int, default=defaults.size,
                        help="clips are SIZE x SIZE pixels (default %(default)s)")
    parser.add_argument("--static-threshold", type=float, default=defaults.static_threshold,
                        help="frames whose motion from a stretch's first frame (the 8th largest "
                             "grey-level change of 64x64 thumbnails, 0-255) stays below this "
                             "are still (default %(default)s)")
    parser.add_argument("--static-frames", type=int, default=defaults.static_frames,
                        help="this many still frames in a row are dropped (default "
                             "%(default)s)")
    parser.add_argument("--cut-threshold", type=float, default=defaults.cut_threshold,
                        help="mean grey-level change (64x64 thumbnails, 0-255) above which two "
                             "consecutive frames are a scene cut (default %(default)s)")
    parser.add_argument("--cut-min", type=float, default=defaults.cut_min,
                        help="a smaller change is a cut too when above this ... (default "
                             "%(default)s)")
    parser.add_argument("--cut-ratio", type=float, default=defaults.cut_ratio,
                        help="... and this many times the median change of the frames before "
                             "(default %(default)s)")
    parser.add_argument("--gap-factor", type=float, default=defaults.gap_factor,
                        help="a stamp jump over this many times the usual frame interval is a "
                             "time gap (default %(default)s)")
    parser.add_argument("--max-gap", type=float, default=defaults.max_gap_s,
                        help="and so is any jump over this many seconds; 0 disables "
                             "(default %(default)s)")
    parser.add_argument("--folder-fps", type=float, default=defaults.folder_fps,
                        help="frame rate assumed for image folders and videos that state none "
                             "(used with --fps; default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = ClipConfig(
            frames=args.frames, stride=args.stride, fps=args.fps, size=args.size,
            static_threshold=args.static_threshold, static_frames=args.static_frames,
            cut_threshold=args.cut_threshold, cut_min=args.cut_min, cut_ratio=args.cut_ratio,
            gap_factor=args.gap_factor,
            max_gap_s=args.max_gap or None, folder_fps=args.folder_fps)
        manifest = prepare_logs(args.paths, args.output, config, args.image_topic)
    except (LogError, ValueError) as error:
        print(f"bootstap-prepare-logs: error: {error}", file=sys.stderr)
        return 2
    data = json.loads(manifest.read_text())
    statuses = [source["status"] for source in data["sources"]]
    damaged = ", ".join(f"{statuses.count(s)} {s}" for s in ("partial", "skipped")
                        if s in statuses)
    print(f"{len(data['clips'])} clips from {len(statuses)} input(s)"
          f"{f' ({damaged}; see the warnings above)' if damaged else ''}; manifest: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
