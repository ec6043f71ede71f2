"""The tracking session: model loading and request handling for a live stream, no ROS.

`create_tracker` turns the tracker's settings (`TrackerSettings`: the node's
`TrackerNodeConfig` has them) into a ready `CausalTracker`, or raises `StartupError`
saying what to change.
`TrackingSession` drives that tracker one frame at a time for a worker thread: it
applies the queued add/remove/reset requests (`RequestQueue`) before each frame, seeds
`grid_points` and the points of the `query_set` (`load_query_set`) on the first frame
(and after each reset), resets when time jumps back, and turns every bad input into
one warning instead of an exception, so that existing tracks survive it. It owns its
tracker and the state around it: callers change them through its methods only.

Model swaps: `ModelLoader` loads a model in a background thread (the latest request
wins); `TrackingSession.prepare_swap`, on that thread, re-encodes for it every point
whose query image is kept (`tracking.reencode`), and `apply_swap`, on the worker
between two frames, re-encodes the rest and moves every live point, with its id, to
the new tracker, or leaves everything as it was when that fails.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from bootstap_ros.model.checkpoint import OFFICIAL_CAUSAL_URL
from bootstap_ros.tracking.query_set import ModelIdentity, QuerySet, QuerySetError
from bootstap_ros.tracking.reencode import PointOrigins, Reencoded, reencode

LOG = logging.getLogger(__name__)


class TrackerSettings(Protocol):
    """What `create_tracker` reads of its settings: the tracker node's `TrackerNodeConfig`
    (ros/settings.py, where each is described and defaulted) has these fields and more."""

    checkpoint: str  # '' = the embedded default model
    causal: bool
    backend: str
    device: str
    precision: str
    torch_compile: bool
    cpu_threads: int  # 0 = torch's default
    resolution: int  # 0 = the checkpoint's own
    softmax_temperature: float  # 0 = the checkpoint's own
    refine_resolution: Sequence[int]  # [0, 0] = resolution
    max_points: int
    visibility_threshold: float
    engine_cache_dir: str


class StartupError(RuntimeError):
    """The node cannot start with its parameters; the message says what to do."""


@dataclass
class TrackerInfo:
    """What was loaded, for the start-up log line and /diagnostics."""

    checkpoint: str
    source: str  # "official" or "project"
    backend: str
    device: str
    resolution: tuple
    causal: bool
    precision: str = "fp32"
    notes: List[str] = field(default_factory=list)
    identity: Optional[ModelIdentity] = None  # what query sets must have been made with


def _checkpoint_path(checkpoint: str) -> Path:
    """The model file for the checkpoint parameter ('' = the embedded model), absolute."""
    from bootstap_ros.model.checkpoint import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(checkpoint).resolve()
    except CheckpointError as error:
        raise StartupError(
            f"{error}. Set the checkpoint parameter to a model file, e.g. `--ros-args -p "
            "checkpoint:=/path/to/causal_bootstapir_checkpoint.pt`, or launch with "
            "checkpoint:=/path/to/model.pt") from None


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(f"device '{device}' was asked for but CUDA is not available "
                           "(torch.cuda.is_available() is False); set device:=cpu or device:=auto")
    return device


def create_tracker(config: TrackerSettings):
    """(CausalTracker, TrackerInfo) for `config`; StartupError says what to fix."""
    from bootstap_ros.model import CheckpointError, load_checkpoint
    from bootstap_ros.tracking import CausalTracker

    path = _checkpoint_path(config.checkpoint)
    device = _resolve_device(config.device)
    if device == "cpu" and config.cpu_threads:
        import torch

        if torch.get_num_threads() != config.cpu_threads:  # a model swap loads beside inference
            torch.set_num_threads(config.cpu_threads)  # the process's pool: the node owns it
    try:
        loaded = load_checkpoint(path, causal=config.causal)
    except CheckpointError as error:
        raise StartupError(
            f"cannot load the model: {error}. Set the checkpoint parameter to a causal BootsTAPIR "
            f"checkpoint (official: {OFFICIAL_CAUSAL_URL}) or a bootstap_ros checkpoint") from None
    from bootstap_ros.model.checkpoint import with_settings

    resolution = (config.resolution,) * 2 if config.resolution else None
    refine = tuple(config.refine_resolution) if tuple(config.refine_resolution) != (0, 0) else None
    model = with_settings(loaded.model, resolution=resolution, refine_resolution=refine,
                          softmax_temperature=config.softmax_temperature or None)
    notes = []
    if not model.config.causal:
        notes.append("the model runs non-causally (causal:=false): each frame is tracked without "
                     "temporal context")

    kwargs = dict(max_points=config.max_points, device=device,
                  visibility_threshold=config.visibility_threshold)
    kwargs.update(_backend_options(config, device, notes))
    try:
        tracker = CausalTracker(model, **kwargs)
    except (ImportError, RuntimeError, ValueError, TypeError) as error:
        raise StartupError(
            f"cannot start the tracker (backend {config.backend}, device {device}, precision "
            f"{config.precision}): {error}. Try backend:=torch, device:=cpu or "
            f"precision:=fp32") from None
    backend = getattr(tracker, "backend_name", None) or getattr(tracker, "backend", None)
    backend = getattr(backend, "name", backend) or "torch"
    precision = getattr(getattr(tracker, "backend", None), "precision", None) or "fp32"
    info = TrackerInfo(checkpoint=str(path), source=loaded.source, backend=str(backend),
                       device=device, resolution=tuple(model.config.resolution),
                       causal=bool(model.config.causal), precision=str(precision), notes=notes,
                       identity=ModelIdentity.of(path, model.config))
    return tracker, info


def check_swap(config: TrackerSettings) -> None:
    """What can be checked of a model swap to `config` at once, without loading anything (a
    missing checkpoint file, an unavailable device); StartupError says what is wrong. The rest
    (a truncated or foreign file, a backend that cannot start) shows when it loads."""
    path = _checkpoint_path(config.checkpoint)
    if not path.is_file():
        raise StartupError(f"checkpoint not found: {path}" if not path.exists() else
                           f"checkpoint {path} is not a file")
    _resolve_device(config.device)


def load_query_set(path: str, info: TrackerInfo) -> QuerySet:
    """The query set at `path`, checked against the node's model; QuerySetError says what to do.

    A set made with another model is accepted when it holds its demonstration images (the
    session re-encodes its points for the node's model), refused when it does not (version 1)."""
    query_set = QuerySet.load(path)
    problem = query_set.model.mismatch(info.identity) if info.identity is not None else None
    if problem and not query_set.reencodable:
        raise QuerySetError(
            f"query set {path} was made with another model than the node's ({problem}) and holds no "
            f"demonstration image (query set version 1), so its points cannot be re-encoded for this "
            f"model. Make it again with this `bootstap-queries` (any --checkpoint), or run the node "
            "with the set's checkpoint")
    return query_set


@dataclass
class AddedQuerySet:
    """Points of a query set just added: their ids, and their positions on the demonstration
    image mapped to the live image's pixels (RoboTAP's goal positions)."""

    ids: np.ndarray
    xy: np.ndarray
    labels: List[str]
    path: str


def _backend_options(config: TrackerSettings, device: str, notes: List[str]) -> dict:
    """The CausalTracker arguments for backend, precision and engine cache.

    Each is passed only when the tracker takes it; a tracker without backends
    accepts only their plain values (torch, fp32), never silently ignoring others.
    """
    from bootstap_ros.backends import camera_precision
    from bootstap_ros.tracking import CausalTracker

    accepted = inspect.signature(CausalTracker).parameters
    takes_options = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    options = {}
    for name, value, plain in (("backend", config.backend, config.backend in ("auto", "torch")),
                               ("precision", camera_precision(config.precision, config.backend, device),
                                config.precision in ("auto", "fp32"))):
        if name in accepted:
            options[name] = value
        elif not plain:
            raise StartupError(
                f"{name} '{value}' is not available: this bootstap_ros runs the PyTorch backend "
                f"only, in fp32. Set {name}:={'auto' if name == 'backend' else 'fp32'}")
    if config.torch_compile:
        if config.backend not in ("auto", "torch"):
            raise StartupError(f"torch_compile compiles the torch backend, not '{config.backend}': "
                               "set backend:=torch (or auto), or torch_compile:=false")
        options["backend"] = "torch"
        options["torch_compile"] = True
    if config.engine_cache_dir:
        cache_dir = str(Path(config.engine_cache_dir).expanduser())
        concrete = config.backend
        try:
            from bootstap_ros.backends import resolve_backend

            concrete = resolve_backend(config.backend, device)
        except (ImportError, RuntimeError, ValueError):
            pass
        if concrete in ("torch", "auto") or not ("cache_dir" in accepted or takes_options):
            notes.append(f"engine_cache_dir '{cache_dir}' is unused: the {concrete} backend "
                         "builds no engine")
        else:
            options["cache_dir"] = cache_dir
    return options


@dataclass
class PreparedSwap:
    """A loaded model ready to replace the session's, with the points it could re-encode ahead."""

    tracker: Any  # CausalTracker
    identity: Optional[ModelIdentity]
    reencoded: Reencoded = field(repr=False)  # the points whose query image was kept, when prepared
    payload: Any = None  # the caller's (the node: its config and TrackerInfo)


@dataclass
class SwapOutcome:
    """What `apply_swap` did: error None when the new model is in use."""

    prepared: PreparedSwap = field(repr=False)
    error: Optional[str] = None
    counts: Dict[str, int] = field(default_factory=dict)  # points by re-encoding source
    lost: List[int] = field(default_factory=list)  # points dropped: nothing to re-encode from
    seconds: float = 0.0  # on the worker


class ModelLoader:
    """Runs `load(request)` in a background thread, one request at a time; the latest wins.

    A request that arrives while another loads waits for it to finish, and the finished
    one is then dropped unseen; `done(request, result, error)` is called (on that
    thread) only for the latest, with error the reason it failed (result None then).
    """

    def __init__(self, load: Callable[[Any], Any], done: Callable[[Any, Any, Optional[str]], None]):
        self._load, self._done = load, done
        self._condition = threading.Condition()
        self._wanted: Any = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.since: Optional[float] = None  # time.time() the pending request was made

    @property
    def pending(self) -> Any:
        """The request loading or waiting to, or None."""
        return self._wanted

    def request(self, request: Any) -> None:
        """Load `request` instead of anything pending; None cancels what is pending."""
        with self._condition:
            if self._closed:
                return
            self._wanted = request
            self.since = time.time() if request is not None else None
            if request is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="model_loader", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._condition:
                request = self._wanted
                if request is None or self._closed:
                    self._thread = None
                    return
            try:
                result, error = self._load(request), None
            except StartupError as failure:
                result, error = None, str(failure)
            except Exception as failure:  # anything a load does must not kill the thread
                result, error = None, f"{type(failure).__name__}: {failure}"
            with self._condition:
                if self._closed:
                    self._thread = None
                    return
                if self._wanted != request:
                    continue  # superseded or cancelled while loading
                self._wanted, self.since = None, None
            self._done(request, result, error)

    def close(self, timeout: float) -> bool:
        """Stop after the load in progress (waiting up to `timeout` s); True when stopped."""
        with self._condition:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)
            return not thread.is_alive()
        return True

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()


class RequestQueue:
    """Thread-safe FIFO of (kind, payload) requests, drained all at once by the worker.

    `received` counts every request ever put: unlike the queue's length, which a frame
    processed in between takes back to 0, it tells for sure that a request arrived."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: deque = deque()
        self.received = 0

    def put(self, kind: str, payload: Any = None) -> None:
        with self._lock:
            self._items.append((kind, payload))
            self.received += 1

    def put_front(self, items: List[Tuple[str, Any]]) -> None:
        """Return requests that could not be applied yet, ahead of newer ones."""
        with self._lock:
            self._items.extendleft(reversed(items))

    def drain(self) -> List[Tuple[str, Any]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def grid_positions(grid_points, size) -> np.ndarray:
    """float32 [K, 2] pixel positions for a grid_points value on an image of (height, width)."""
    if isinstance(grid_points, int):
        if grid_points <= 0:
            return np.zeros((0, 2), np.float32)
        from bootstap_ros.queries import grid_queries

        return grid_queries(grid_points, size)[:, 1:].astype(np.float32)
    return np.asarray(grid_points, np.float32).reshape(-1, 2)


def _no_points(size):
    """The TrackResult of a frame tracked with no point: every array empty."""
    from bootstap_ros.tracking import TrackResult

    empty = np.zeros(0, np.float32)
    return TrackResult(ids=np.zeros(0, np.int64), xy=np.zeros((0, 2), np.float32),
                       visible=np.zeros(0, bool), occlusion=empty, uncertainty=empty.copy(),
                       occlusion_logit=empty.copy(), expected_dist_logit=empty.copy(),
                       frame_size=tuple(size))


class TrackingSession:
    """A CausalTracker plus the requests waiting for the next frame (see module docstring).

    warn(kind, message) is called for every problem; the node rate-limits per kind.
    The request and setting methods are thread-safe; `process` and `apply_swap` run on
    the worker thread only, as do the `take_*` methods that hand over what they produced.
    """

    def __init__(self, tracker, grid_points=0,
                 warn: Optional[Callable[[str, str], None]] = None,
                 identity: Optional[ModelIdentity] = None, frame_memory_bytes: int = 128 << 20,
                 query_set: Optional[QuerySet] = None):
        """identity: the tracker's model (ModelIdentity), against which query sets are checked
        (None: sets are used as they are). frame_memory_bytes: the bound on the camera frames
        kept so that a model swap can re-encode points where they were added. query_set: the
        set whose points are added on the first frame and after each reset (`load_query_set`)."""
        self._tracker = tracker
        self._identity = identity
        self._origins = PointOrigins(frame_memory_bytes)
        self._swap_lock = threading.Lock()
        self._pending_swap: Optional[PreparedSwap] = None
        self._swap_outcomes: List[SwapOutcome] = []  # until the owner takes them
        self._grid_points = grid_points
        self.requests = RequestQueue()
        self._warn = warn or (lambda kind, message: LOG.warning(message))
        self._seeded = False
        self._last_stamp: Optional[int] = None
        self.frames = 0
        self.network_steps = 0  # frames the network ran on (none while no point exists)
        self.resets = 0
        # Added on the first frame and after each reset (kept re-encoded after a model swap).
        self.query_set: Optional[QuerySet] = query_set
        self._added_query_sets: List[AddedQuerySet] = []  # until the owner takes them

    # What the session holds.
    @property
    def tracker(self):
        """The CausalTracker in use (another one after a model swap)."""
        return self._tracker

    @property
    def capacity(self) -> int:
        """The most points the tracker in use holds."""
        return self._tracker.max_points

    @property
    def kept_frames(self) -> Tuple[int, int]:
        """(camera frames kept for re-encoding points in a model swap, their bytes)."""
        return self._origins.kept

    # Settings that change at runtime, from any thread.
    def set_visibility_threshold(self, threshold: float) -> None:
        """A point is visible from the next frame on when its visibility exceeds `threshold`
        (a model swap carries it over)."""
        self._tracker.visibility_threshold = float(threshold)

    def set_frame_memory(self, memory_bytes: int) -> None:
        """The bound on the camera frames kept for model swaps; applied from the next frame."""
        self._origins.memory_bytes = int(memory_bytes)

    # What the worker produced, for its owner to report (worker thread).
    def take_swap_outcomes(self) -> List[SwapOutcome]:
        """The outcomes of the swaps made since the last call, oldest first."""
        outcomes, self._swap_outcomes = self._swap_outcomes, []
        return outcomes

    def take_added_query_sets(self) -> List[AddedQuerySet]:
        """The query sets whose points were added since the last call, oldest first."""
        added, self._added_query_sets = self._added_query_sets, []
        return added

    # Thread-safe requests, applied before the next frame.
    def request_add(self, xy) -> None:
        self.requests.put("add", np.asarray(xy, np.float64).reshape(-1, 2))

    def request_remove(self, ids) -> None:
        self.requests.put("remove", np.asarray(list(ids), np.int64).reshape(-1))

    def request_reset(self) -> None:
        self.requests.put("reset")

    def request_query_set(self, query_set: Optional[QuerySet]) -> None:
        """Make `query_set` the session's set and add its points before the next frame
        (None: no set from now on; points already added stay)."""
        self.requests.put("query_set", query_set)

    def reset(self) -> None:
        self._tracker.reset()
        self._seeded = False
        self.resets += 1

    # Model swaps.
    def prepare_swap(self, tracker, identity: Optional[ModelIdentity], payload=None) -> PreparedSwap:
        """Make `tracker` (a new model's) ready to take over: on the CPU, re-encode for it every
        point whose query image is kept (a backbone pass per image, the costly part there). Any
        thread (the model loader's); the session is not changed. On a GPU that is left to
        `apply_swap` on the worker: a pass costs milliseconds there, and the torch backend's
        CUDA graphs are captured by the thread that replays them."""
        records = self._origins.records() if getattr(tracker.device, "type", "cpu") == "cpu" else []
        return PreparedSwap(tracker, identity, reencode(tracker.query_features, identity, records,
                                                        queries_only=True), payload)

    def request_swap(self, prepared: Optional[PreparedSwap]) -> None:
        """Swap to `prepared` before the next frame (replacing a swap not yet made; None: none)."""
        with self._swap_lock:
            self._pending_swap = prepared

    @property
    def swap_pending(self) -> bool:
        return self._pending_swap is not None

    def apply_swap(self) -> Optional[SwapOutcome]:
        """Make the requested swap now, between two frames (worker thread): every live point
        moves to the new tracker with its id, re-encoded from the best source kept
        (`tracking.reencode`), its causal state restarting. On any failure the session keeps
        its tracker and every point. The outcome is also kept for `take_swap_outcomes`."""
        with self._swap_lock:
            prepared, self._pending_swap = self._pending_swap, None
        if prepared is None:
            return None
        start = time.perf_counter()
        old, new = self._tracker, prepared.tracker
        try:
            live = old.ids
            if len(live) > new.max_points:
                raise ValueError(f"the new tracker holds at most {new.max_points} points and {len(live)} "
                                 "are tracked: remove points or raise max_points")
            ready = np.isin(live, prepared.reencoded.ids)
            parts = [prepared.reencoded.take(live[ready])]
            if (~ready).any():
                parts.append(reencode(new.query_features, prepared.identity,
                                      self._origins.records(live[~ready])))
            points = Reencoded.join(parts)
            new.next_id = max(new.next_id, old.next_id)
            new.visibility_threshold = old.visibility_threshold
            if len(points.ids):
                new.add_points_from_features(points.features, ids=points.ids)
        except Exception as error:  # whatever it was, the old model goes on
            outcome = SwapOutcome(prepared, error=f"{type(error).__name__}: {error}" if not isinstance(
                error, ValueError) else str(error), seconds=time.perf_counter() - start)
            self._swap_outcomes.append(outcome)
            return outcome
        self._origins.requeried(points.requeried)
        self._tracker, self._identity = new, prepared.identity
        if points.lost:
            self._warn("model_swap", f"model swap: {len(points.lost)} point(s) had no image left to "
                       f"re-encode them from and were dropped: ids {points.lost[:10]}")
        outcome = SwapOutcome(prepared, counts=points.counts(), lost=list(points.lost),
                              seconds=time.perf_counter() - start)
        self._swap_outcomes.append(outcome)
        return outcome

    def _fitting(self, query_set: QuerySet) -> Optional[QuerySet]:
        """`query_set` with query features of the session's model: as it is when it was made
        with that model, else re-encoded from its demonstration images (and kept so, for the
        next reset); None, with a warning, when it cannot be."""
        problem = query_set.model.mismatch(self._identity) if self._identity is not None else None
        if problem is None:
            return query_set
        if not query_set.reencodable:
            self._warn("query_set", f"query set {query_set.path}: its points are not added: it was made "
                       f"with another model ({problem}) and holds no demonstration image (query set "
                       "version 1) to make this model's query features from; make it again with "
                       "this bootstap-queries")
            return None
        fitted = query_set.reencoded(self._tracker.query_features, self._identity)
        if self.query_set is query_set:
            self.query_set = fitted
        return fitted

    def _add_query_set(self, query_set: QuerySet, size) -> None:
        query_set = self._fitting(query_set)
        if query_set is None:
            return
        free = self._tracker.max_points - self._tracker.num_points
        count = min(len(query_set), free)
        if count < len(query_set):
            self._warn("capacity",
                       f"tracker is full: adding {count} of the {len(query_set)} points of query set "
                       f"{query_set.path} ({self._tracker.num_points} of {self._tracker.max_points} in "
                       "use); remove points, reset, or raise max_points")
        ids = self._tracker.add_points_from_features(
            {name: array[:count] for name, array in query_set.features.items()})
        self._origins.add_from_set(ids, query_set, np.arange(count))
        self._added_query_sets.append(AddedQuerySet(
            ids, query_set.positions_in(size)[:count], list(query_set.labels[:count]),
            query_set.path or ""))

    def process(self, frame: np.ndarray, encoding: str, stamp_ns: Optional[int] = None):
        """Apply pending requests and track `frame`; a TrackResult, or None for an unusable frame."""
        from bootstap_ros.tracking import FrameError, TrackerFullError, to_rgb

        try:
            # Checked first, so that a bad frame leaves the tracker and the requests untouched.
            rgb = to_rgb(frame, encoding)
        except FrameError as error:
            self._warn("bad_image", f"skipping a frame: {error}")
            return None
        self.apply_swap()
        key = self._origins.frame(rgb)
        if stamp_ns is not None and self._last_stamp is not None and stamp_ns < self._last_stamp:
            self._warn("time_jump",
                       f"image stamp went back by {(self._last_stamp - stamp_ns) / 1e9:.3f} s (a bag "
                       "looping, or a restarted source): resetting all tracks")
            self.reset()
        height, width = rgb.shape[:2]
        if self._tracker.frame_size not in (None, (height, width)) and self._tracker.num_points:
            self._warn("size_change",
                       f"image size changed from {self._tracker.frame_size[1]}x"
                       f"{self._tracker.frame_size[0]} to {width}x{height}: keeping "
                       f"{self._tracker.num_points} points, reported in the new image's pixels")
        additions = self._apply(self.requests.drain(), (height, width))
        if not len(additions) and not self._tracker.num_points:
            # Nothing to track: no network work at all (the backbone alone is most of a step).
            result = _no_points((height, width))
        else:
            self.network_steps += 1
            try:
                result = self._tracker.step(rgb, "rgb8", add=additions if len(additions) else None)
            except (ValueError, TrackerFullError) as error:  # not expected after _apply's checks
                self._warn("bad_points", f"points not added: {error}")
                result = self._tracker.step(rgb, "rgb8")
        if len(result.new_ids):
            self._origins.add(result.new_ids, key, additions)
        self._origins.observe(key, result)
        if stamp_ns is not None:
            self._last_stamp = stamp_ns
        self.frames += 1
        return result

    def _apply(self, requests, size) -> np.ndarray:
        """Apply removes and resets in order; returns the checked positions to add."""
        from bootstap_ros.tracking.tracker import invalid_query_points

        additions: List[np.ndarray] = []
        add_query_set = False
        for kind, payload in requests:
            if kind == "query_set":
                self.query_set, add_query_set = payload, payload is not None
            elif kind == "reset":
                self.reset()
                additions.clear()
            elif kind == "remove":
                removed = self._tracker.remove_points(payload)
                unknown = np.setdiff1d(payload, removed)
                if len(unknown):
                    self._warn("unknown_ids", f"remove_points: no active point has id(s) "
                               f"{unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''}")
            elif kind == "add":
                additions.append(payload)
        if not self._seeded:
            self._seeded = True
            add_query_set = self.query_set is not None
            additions.insert(0, grid_positions(self._grid_points, size))
        if add_query_set:
            self._add_query_set(self.query_set, size)
        if not additions:
            return np.zeros((0, 2), np.float32)
        xy, bad, message = invalid_query_points(np.concatenate(additions), size)
        if bad.any():
            self._warn("bad_points", f"ignoring {message}")
        xy = xy[~bad]
        free = self._tracker.max_points - self._tracker.num_points
        if len(xy) > free:
            self._warn("capacity",
                       f"tracker is full: adding {free} of {len(xy)} requested point(s) "
                       f"({self._tracker.num_points} of {self._tracker.max_points} in use); remove "
                       "points, reset, or raise max_points")
            xy = xy[:free]
        return xy.astype(np.float32)
