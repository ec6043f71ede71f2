"""Query sets: points chosen on a demonstration image, kept with their query features.

RoboTAP's workflow: points are chosen on a demonstration frame and tracked in the
live stream with the query features of the demonstration frame, not of the live
one. A `QuerySet` holds what that needs, and this module owns its file format:

    format            "bootstap_ros.query_set"
    version           2
    xy                float32 [N, 2]  positions on the demonstration image (pixels,
                                      TAPIR raster: pixel centres at +0.5)
    image_index       int64 [N]       which demonstration image each point lies on
    image_png.K       uint8 [bytes]   demonstration image K (K = 0, 1, ...), RGB, as a
                                      PNG file (lossless: another model re-encodes exactly)
    features.lowres   float32 [N, C_lowres]  query features, as the tracker samples them
    features.hires    float32 [N, C_hires]
    labels            str [N]         per-point labels ("" where none)
    image_size        int64 [2]       (height, width) of the demonstration image
    checkpoint_sha256 str             SHA-256 of the checkpoint file that made the features
    model_config      str             the model's ModelConfig as JSON
    source            str             where the points were defined (file and frame)

in one `.npz` (numpy's zip of arrays, read with `allow_pickle=False`). Query
features are only meaningful to the model that made them, so a set records the
model's identity and `ModelIdentity.mismatch` says how another model differs;
with the demonstration images, `reencoded` makes the features of any other model.
Version 1 (no image_index, no images) still loads: such a set serves only the model
it was made with.

`track_query_set` tracks a set's points through a clip outside ROS, as the node's
`query_set` parameter does in a live stream (`bootstap-track --queries SET.npz`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

FORMAT_NAME = "bootstap_ros.query_set"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # version 1: no demonstration images
FEATURE_NAMES = ("lowres", "hires")
#: Model config fields that act only after the query features are sampled (the temporal
#: mixer's causality, the cost volume's softmax): with the same weights, a set made under one
#: value serves another, e.g. the node's `softmax_temperature` or `causal` overrides.
_IGNORED_CONFIG_FIELDS = ("causal", "softmax_temperature", "soft_argmax_radius")


class QuerySetError(ValueError):
    """A query set file that cannot be used; the message says what was expected and found."""


def file_sha256(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made (or would use) query features: checkpoint file hash and config."""

    checkpoint_sha256: str
    model_config: Mapping[str, Any]  # ModelConfig.to_dict()

    @classmethod
    def of(cls, checkpoint: Union[str, os.PathLike], config) -> "ModelIdentity":
        """The identity of `config` (a ModelConfig) run with the weights in `checkpoint`."""
        return cls(file_sha256(checkpoint), config.to_dict())

    def mismatch(self, other: "ModelIdentity") -> Optional[str]:
        """None when features of one serve the other, else what differs, in words."""
        problems = []
        if self.checkpoint_sha256 != other.checkpoint_sha256:
            problems.append(f"checkpoint SHA-256 {self.checkpoint_sha256[:12]}... vs "
                            f"{other.checkpoint_sha256[:12]}...")
        names = sorted((set(self.model_config) | set(other.model_config)) - set(_IGNORED_CONFIG_FIELDS))
        differing = [f"{name} {_plain(self.model_config.get(name))} vs {_plain(other.model_config.get(name))}"
                     for name in names
                     if _plain(self.model_config.get(name)) != _plain(other.model_config.get(name))]
        if differing:
            problems.append("model config " + ", ".join(differing))
        return "; ".join(problems) or None


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


@dataclass
class QuerySet:
    """Points on one demonstration image with their query features (see module docstring)."""

    xy: np.ndarray  # float32 [N, 2]
    features: Dict[str, np.ndarray]  # name -> float32 [N, C]
    image_size: Tuple[int, int]  # (height, width)
    model: ModelIdentity
    labels: Sequence[str] = ()
    source: str = ""
    path: Optional[str] = field(default=None, compare=False)  # where it was loaded from
    # The demonstration images (uint8 RGB [H, W, 3], each of image_size) and, per point, the
    # one it lies on; none in a version-1 file.
    images: Sequence[np.ndarray] = field(default=(), compare=False)
    image_index: Optional[np.ndarray] = None  # int64 [N]; None: all on image 0

    def __post_init__(self):
        self.xy = np.asarray(self.xy, np.float32).reshape(-1, 2)
        self.images = tuple(np.ascontiguousarray(image, np.uint8) for image in self.images)
        self.image_index = (np.zeros(len(self.xy), np.int64) if self.image_index is None
                            else np.asarray(self.image_index, np.int64).reshape(-1))
        self.features = {k: np.ascontiguousarray(v, np.float32) for k, v in self.features.items()}
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.labels = tuple(str(v) for v in self.labels) or ("",) * len(self.xy)
        self._check(self.path or "query set")

    def __len__(self) -> int:
        return len(self.xy)

    def _check(self, where: str) -> None:
        n = len(self.xy)
        missing = [name for name in FEATURE_NAMES if name not in self.features]
        if missing:
            raise QuerySetError(f"{where}: lacks query features {missing}; a query set has "
                                f"{list(FEATURE_NAMES)}")
        for name, array in self.features.items():
            if array.ndim != 2 or len(array) != n:
                raise QuerySetError(f"{where}: features.{name} has shape {array.shape}, expected "
                                    f"[{n}, C] (one row per point)")
            if not np.isfinite(array).all():
                raise QuerySetError(f"{where}: features.{name} holds NaN or infinite values")
        if len(self.labels) != n:
            raise QuerySetError(f"{where}: {len(self.labels)} labels for {n} points")
        height, width = self.image_size
        if height <= 0 or width <= 0:
            raise QuerySetError(f"{where}: image_size {self.image_size} must be positive (height, width)")
        for index, image in enumerate(self.images):
            if image.shape != (height, width, 3):
                raise QuerySetError(f"{where}: demonstration image {index} has shape {image.shape}, "
                                    f"expected {[height, width, 3]} (image_size, RGB)")
        if len(self.image_index) != n or (n and self.images and (
                self.image_index.min() < 0 or self.image_index.max() >= len(self.images))):
            raise QuerySetError(f"{where}: image_index must give each of the {n} points one of the "
                                f"{len(self.images)} demonstration images")
        if n and (not np.isfinite(self.xy).all() or (self.xy < 0).any() or (self.xy[:, 0] > width).any()
                  or (self.xy[:, 1] > height).any()):
            raise QuerySetError(f"{where}: positions must lie in the {width}x{height} image "
                                f"(x in [0, {width}], y in [0, {height}])")

    def positions_in(self, size: Tuple[int, int]) -> np.ndarray:
        """The points' positions mapped to an image of `size` (height, width): the same
        fraction of the image, as if the demonstration image were resized to it."""
        height, width = self.image_size
        return (self.xy * np.array([size[1] / width, size[0] / height], np.float32)).astype(np.float32)

    @property
    def reencodable(self) -> bool:
        """Whether the set holds its demonstration images, so that any model can use it."""
        return bool(self.images)

    def reencoded(self, query_features, identity: ModelIdentity) -> "QuerySet":
        """This set for another model: query_features(image, xy [K, 2]) -> {name: [K, C]} (that
        model's, e.g. a CausalTracker's `query_features`) is run on each demonstration image;
        identity is that model's. QuerySetError for a set without its images (version 1)."""
        if not self.reencodable:
            raise QuerySetError(
                f"query set {self.path or ''} holds no demonstration image (query set version 1), so "
                "another model cannot make its query features: make it again with this "
                "bootstap-queries")
        features: Dict[str, np.ndarray] = {}
        for index, image in enumerate(self.images):
            rows = np.flatnonzero(self.image_index == index)
            if not len(rows):
                continue
            made = query_features(image, self.xy[rows])
            for name, array in made.items():
                features.setdefault(name, np.zeros((len(self), array.shape[1]), np.float32))[rows] = array
        return dataclasses.replace(self, features=features, model=identity)

    # ------------------------------------------------------------- file format
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the set to `path` (.npz), atomically: a crash leaves no truncated file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION, np.int64),
            "xy": self.xy, "labels": np.array(self.labels, dtype=str).reshape(len(self.xy)),
            "image_size": np.array(self.image_size, np.int64),
            "checkpoint_sha256": np.array(self.model.checkpoint_sha256),
            "model_config": np.array(json.dumps(dict(self.model.model_config), sort_keys=True)),
            "source": np.array(self.source),
            "image_index": self.image_index,
            **{f"features.{name}": array for name, array in self.features.items()},
            **{f"image_png.{index}": _png(image) for index, image in enumerate(self.images)},
        }
        handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
        os.close(handle)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "QuerySet":
        """Read a set written by `save`; QuerySetError names what is wrong with the file."""
        path = Path(path).expanduser()
        where = str(path)
        if not path.is_file():
            raise QuerySetError(f"query set not found: {where} (make one with bootstap-queries)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
            raise QuerySetError(
                f"{where} ({path.stat().st_size} bytes) is not a readable query set: truncated, "
                f"corrupt or not an .npz file ({type(error).__name__}: {error}); make it again "
                "with bootstap-queries") from None
        if str(arrays.get("format", "")) != FORMAT_NAME:
            raise QuerySetError(f"{where} is an .npz file but not a query set (format "
                                f"{str(arrays.get('format', 'missing'))!r}, expected {FORMAT_NAME!r}); "
                                "make one with bootstap-queries")
        version = int(arrays.get("version", -1))
        if version not in READ_VERSIONS:
            raise QuerySetError(f"{where} has query set version {version}; this bootstap_ros reads "
                                f"versions {', '.join(map(str, READ_VERSIONS))}: make it again with "
                                "this bootstap-queries")
        needed = ["xy", "labels", "image_size", "checkpoint_sha256", "model_config"] + [
            f"features.{name}" for name in FEATURE_NAMES] + (["image_index"] if version >= 2 else [])
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise QuerySetError(f"{where} lacks {missing}: not a complete query set")
        try:
            config = json.loads(str(arrays["model_config"]))
        except ValueError as error:
            raise QuerySetError(f"{where}: model_config is not valid JSON ({error})") from None
        if arrays["xy"].ndim != 2 or arrays["xy"].shape[1:] != (2,):
            raise QuerySetError(f"{where}: xy has shape {arrays['xy'].shape}, expected [N, 2]")
        if arrays["image_size"].shape != (2,):
            raise QuerySetError(f"{where}: image_size has shape {arrays['image_size'].shape}, "
                                "expected [2] (height, width)")
        images = []
        for index in range(sum(name.startswith("image_png.") for name in arrays)):
            if f"image_png.{index}" not in arrays:
                raise QuerySetError(f"{where} lacks image_png.{index}: not a complete query set")
            images.append(_unpng(arrays[f"image_png.{index}"], f"{where}: image_png.{index}"))
        return cls(
            xy=arrays["xy"], image_size=tuple(arrays["image_size"].reshape(-1)[:2]),
            features={name[len("features."):]: array for name, array in arrays.items()
                      if name.startswith("features.")},
            model=ModelIdentity(str(arrays["checkpoint_sha256"]), config),
            labels=[str(v) for v in arrays["labels"].reshape(-1)], source=str(arrays.get("source", "")),
            path=where, images=images, image_index=arrays.get("image_index"))


def fitted_query_set(query_set: QuerySet, identity: Optional[ModelIdentity], query_features) -> QuerySet:
    """`query_set` with query features of the model `identity` names: as it is when it was
    made with that model (or when identity is None: the features are then only checked for
    their shape when added), else re-encoded from its demonstration images with
    `query_features` (e.g. a CausalTracker's). QuerySetError for another model's set without
    its images (version 1)."""
    problem = query_set.model.mismatch(identity) if identity is not None else None
    if problem is None:
        return query_set
    if not query_set.reencodable:
        raise QuerySetError(
            f"query set {query_set.path or ''} was made with another model ({problem}) and holds no "
            "demonstration image (query set version 1) to make this model's query features from: make "
            "it again with this bootstap-queries (any --checkpoint), or track with the set's checkpoint")
    return query_set.reencoded(query_features, identity)


def track_query_set(model, frames: Iterable[np.ndarray], query_set: QuerySet,
                    identity: Optional[ModelIdentity] = None, device: str = "cpu",
                    block_size: Optional[int] = None, progress: Optional[Callable[[], None]] = None,
                    backend="auto", precision: str = "auto", **backend_options):
    """Track the points of `query_set` through `frames` (uint8 RGB [H, W, 3]) as the node's
    `query_set` parameter does: every point is added with its stored query features before
    the first frame and tracked from that frame on (zero causal state), so no frame of the
    clip needs to show the demonstration. Returns `ClipTracks` [N, T] in the clip's pixels,
    rows in the set's point order.

    identity: the model's (`ModelIdentity.of(checkpoint, model.config)`); a set made with
    another model is then re-encoded from its demonstration images (`fitted_query_set`).
    Without it the stored features are used as they are. `progress` is called once per
    frame; backend, precision and backend_options go to `CausalTracker`."""
    from bootstap_ros.tracking.clip import ClipTracks
    from bootstap_ros.tracking.tracker import CausalTracker

    tracker = CausalTracker(model, max_points=max(len(query_set), 1), device=device, block_size=block_size,
                            backend=backend, precision=precision, **backend_options)
    query_set = fitted_query_set(query_set, identity, tracker.query_features)
    ids = tracker.add_points_from_features(query_set.features)
    row_of = {int(point_id): row for row, point_id in enumerate(ids)}
    results = []
    for frame in frames:
        results.append(tracker.step(frame))
        if progress is not None:
            progress()
    n, num_frames = len(query_set), len(results)
    tracks = np.full((n, num_frames, 2), np.nan, np.float32)
    occlusion_logits = np.full((n, num_frames), np.nan, np.float32)
    expected_dist_logits = np.full((n, num_frames), np.nan, np.float32)
    occluded = np.ones((n, num_frames), bool)
    for t, result in enumerate(results):
        rows = np.array([row_of[int(point_id)] for point_id in result.ids], np.int64)
        tracks[rows, t] = result.xy
        occlusion_logits[rows, t] = result.occlusion_logit
        expected_dist_logits[rows, t] = result.expected_dist_logit
        occluded[rows, t] = ~result.visible
    return ClipTracks(tracks, occluded, occlusion_logits, expected_dist_logits)


def _png(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> the bytes of a PNG file, as a uint8 array."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise QuerySetError(f"could not encode a {image.shape} demonstration image as PNG")
    return encoded.reshape(-1)


def _unpng(data: np.ndarray, where: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.asarray(data, np.uint8).reshape(-1), cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise QuerySetError(f"{where} is not a readable PNG image: the file is corrupt; make it again "
                            "with bootstap-queries")
    return np.ascontiguousarray(image[:, :, ::-1])
