"""What a model swap needs to re-encode each live point, kept in bounded memory.

A tracked point is its query features (sampled from the image it was queried on, at
its position there) plus its causal state. Another model cannot use either: it needs
query features of its own, made from an image and a position. `PointOrigins` keeps,
per live point id, where its query came from, and `reencode` makes the new model's
features from that, best source first:

    query    the image the point was queried on and its position there: the point stays
             exactly the one asked for (a camera frame it was added on, kept while the
             memory bound allows; or a query set's demonstration image, always kept);
             features the set already holds for that very model are used as they are
    seen     else the most recent frame on which it was visible, at its position there
    latest   else the latest frame tracked, at its position there, visible or not

Camera frames are kept by reference (the arrays the tracker was given; nothing is
copied), only while a live point needs them, and within `memory_bytes`: past it the
oldest go first, except the latest frame. The owner calls `frame` for each frame,
`add`/`add_from_set` for points added on it and `observe` with the frame's result;
`records` may be called from another thread (a model loading in the background).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: The sources of a re-encoded point, best first (see the module docstring).
SOURCES = ("query", "seen", "latest")


@dataclass(frozen=True)
class Source:
    """An image and a pixel position (x, y) on it: enough to make a point's query features."""

    kind: str  # one of SOURCES
    image: np.ndarray  # uint8 RGB [H, W, 3]
    xy: Tuple[float, float]
    frame: Optional[int] = None  # the kept camera frame's key; None for a query set's image


@dataclass(frozen=True)
class PointRecord:
    """What is known about one live point, for re-encoding it (see the module docstring)."""

    id: int
    query: Optional[Source]
    seen: Optional[Source]
    latest: Optional[Source]
    features: Optional[Dict[str, np.ndarray]] = None  # rows [C] of a query set's features
    identity: object = None  # the ModelIdentity `features` belong to


@dataclass
class Reencoded:
    """Query features of points for one model, in the order of `ids`."""

    ids: np.ndarray  # int64 [K]
    features: Dict[str, np.ndarray]  # name -> float32 [K, C]
    kinds: List[str]  # per point: "features" (a set's own, fitting) or one of SOURCES
    requeried: Dict[int, Source] = field(default_factory=dict)  # points whose query moved
    lost: List[int] = field(default_factory=list)  # points with nothing to re-encode from

    def counts(self) -> Dict[str, int]:
        return {kind: self.kinds.count(kind) for kind in ("features",) + SOURCES}

    def take(self, ids) -> "Reencoded":
        """The rows of `ids` (each present), in that order."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        row_of = {int(point_id): row for row, point_id in enumerate(self.ids.tolist())}
        rows = [row_of[int(point_id)] for point_id in ids]
        return Reencoded(ids, {name: array[rows] for name, array in self.features.items()},
                         [self.kinds[row] for row in rows],
                         {int(i): self.requeried[int(i)] for i in ids if int(i) in self.requeried})

    @staticmethod
    def join(parts: Sequence["Reencoded"]) -> "Reencoded":
        names = sorted({name for part in parts for name in part.features})
        return Reencoded(
            np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64),
            {name: np.concatenate([p.features[name] for p in parts if len(p.ids)] or
                                  [np.zeros((0, 0), np.float32)]) for name in names},
            [kind for p in parts for kind in p.kinds],
            {i: s for p in parts for i, s in p.requeried.items()},
            [i for p in parts for i in p.lost])


@dataclass
class _Query:
    xy: Tuple[float, float]
    frame: Optional[int] = None  # a kept camera frame; None once dropped (or for a set)
    image: Optional[np.ndarray] = None  # a query set's demonstration image
    features: Optional[Dict[str, np.ndarray]] = None
    identity: object = None


class PointOrigins:
    """Per live point: its query's image and position, and its last sighting (module docstring)."""

    def __init__(self, memory_bytes: int = 128 << 20):
        self.memory_bytes = int(memory_bytes)  # may change at any time; applied by `observe`
        self._lock = threading.Lock()
        self.frames: "OrderedDict[int, np.ndarray]" = OrderedDict()  # key -> image, oldest first
        self._next_key = 0
        self._queries: Dict[int, _Query] = {}
        self._seen: Dict[int, Tuple[int, Tuple[float, float]]] = {}  # id -> (frame, xy)
        self._latest: Optional[Tuple[int, Dict[int, Tuple[float, float]]]] = None
        self.dropped_frames = 0  # frames dropped for the memory bound

    # ------------------------------------------------------------- the owner's updates
    def frame(self, image: np.ndarray) -> int:
        """Keep `image` (uint8 RGB [H, W, 3], not modified afterwards) for now; its key."""
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self.frames[key] = image
            return key

    def add(self, ids, frame: int, xy) -> None:
        """Points `ids` were queried on kept `frame` at pixel positions `xy` [K, 2]."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        with self._lock:
            for point_id, (x, y) in zip(np.asarray(ids).tolist(), xy):
                self._queries[point_id] = _Query((float(x), float(y)), frame=frame)

    def add_from_set(self, ids, query_set, rows) -> None:
        """Points `ids` are rows `rows` of `query_set` (a tracking.query_set.QuerySet)."""
        with self._lock:
            for point_id, row in zip(np.asarray(ids).tolist(), np.asarray(rows).tolist()):
                x, y = query_set.xy[row]
                image = (query_set.images[int(query_set.image_index[row])]
                         if len(query_set.images) else None)
                self._queries[point_id] = _Query(
                    (float(x), float(y)), image=image, identity=query_set.model,
                    features={name: array[row] for name, array in query_set.features.items()})

    def observe(self, frame: int, result) -> None:
        """`result` (a TrackResult: every live point) was tracked on kept `frame`: forget the
        points it lacks, note where each visible point was seen, drop the frames no live point
        needs and, past `memory_bytes`, the oldest others (never `frame` itself)."""
        positions = {int(i): (float(x), float(y)) for i, (x, y) in zip(result.ids.tolist(), result.xy)}
        with self._lock:
            for table in (self._queries, self._seen):
                for point_id in [i for i in table if i not in positions]:
                    del table[point_id]
            for point_id in result.ids[np.asarray(result.visible, bool)].tolist():
                self._seen[point_id] = (frame, positions[point_id])
            self._latest = (frame, positions)
            needed = ({q.frame for q in self._queries.values()} | {f for f, _ in self._seen.values()}
                      | {frame})
            for key in [k for k in self.frames if k not in needed]:
                del self.frames[key]
            while self._bytes() > self.memory_bytes and len(self.frames) > 1:
                key = next(k for k in self.frames if k != frame)
                self._drop(key)

    def _bytes(self) -> int:
        return sum(image.nbytes for image in self.frames.values())

    def _drop(self, key: int) -> None:
        del self.frames[key]
        self.dropped_frames += 1
        for query in self._queries.values():
            if query.frame == key:
                query.frame = None
        for point_id in [i for i, (f, _) in self._seen.items() if f == key]:
            del self._seen[point_id]

    def requeried(self, sources: Dict[int, Source]) -> None:
        """After a swap: these points were re-encoded from another image and position, which
        is their query from now on."""
        with self._lock:
            for point_id, source in sources.items():
                self._queries[point_id] = _Query(source.xy, frame=source.frame)

    # ------------------------------------------------------------- reading
    @property
    def kept(self) -> Tuple[int, int]:
        """(camera frames kept, their bytes)."""
        with self._lock:
            return len(self.frames), self._bytes()

    def records(self, ids=None) -> List[PointRecord]:
        """A snapshot of the points `ids` (default: every point known), safe to use from
        another thread: it holds references to the images, not to this object's state."""
        with self._lock:
            known = sorted(set(self._queries) | set(self._seen) | set(self._latest[1] if self._latest else ()))
            wanted = known if ids is None else [int(i) for i in np.asarray(ids).reshape(-1)]
            out = []
            for point_id in wanted:
                query = self._queries.get(point_id)
                query_source = None
                if query is not None and query.image is not None:
                    query_source = Source("query", query.image, query.xy)
                elif query is not None and query.frame in self.frames:
                    query_source = Source("query", self.frames[query.frame], query.xy, query.frame)
                seen = self._seen.get(point_id)
                seen_source = (Source("seen", self.frames[seen[0]], seen[1], seen[0])
                               if seen is not None and seen[0] in self.frames else None)
                latest_source = None
                if self._latest is not None and point_id in self._latest[1] and self._latest[0] in self.frames:
                    key = self._latest[0]
                    latest_source = Source("latest", self.frames[key], self._latest[1][point_id], key)
                out.append(PointRecord(point_id, query_source, seen_source, latest_source,
                                       query.features if query is not None else None,
                                       query.identity if query is not None else None))
            return out


def reencode(query_features: Callable[[np.ndarray, np.ndarray], Dict[str, np.ndarray]],
             identity, records: Sequence[PointRecord], queries_only: bool = False) -> Reencoded:
    """Query features for a model, one row per record (see the module docstring).

    query_features(image, xy [K, 2]) -> {name: [K, C]}: the new model's (a CausalTracker's
    `query_features`), called once per distinct image. identity: the new model's
    ModelIdentity (None: unknown, so a set's stored features are never reused).
    queries_only: re-encode only the points whose query image is kept (what a model loading
    in the background can do ahead of the swap); the others are left out.
    """
    chosen: List[Tuple[PointRecord, str, Optional[Source]]] = []
    lost = []
    for record in records:
        if (record.features is not None and identity is not None and record.identity is not None
                and record.identity.mismatch(identity) is None):
            chosen.append((record, "features", None))
            continue
        source = record.query or (None if queries_only else (record.seen or record.latest))
        if source is None:
            if not queries_only:
                lost.append(record.id)
            continue
        chosen.append((record, source.kind, source))
    groups: "OrderedDict[int, List[int]]" = OrderedDict()
    for row, (_, _, source) in enumerate(chosen):
        if source is not None:
            groups.setdefault(id(source.image), []).append(row)
    rows_features: Dict[int, Dict[str, np.ndarray]] = {}
    for rows in groups.values():
        image = chosen[rows[0]][2].image
        xy = np.array([chosen[r][2].xy for r in rows], np.float32)
        made = query_features(image, xy)
        for index, row in enumerate(rows):
            rows_features[row] = {name: array[index] for name, array in made.items()}
    for row, (record, kind, _) in enumerate(chosen):
        if kind == "features":
            rows_features[row] = record.features
    names = sorted(rows_features[0]) if chosen else []
    features = {name: np.stack([rows_features[row][name] for row in range(len(chosen))]).astype(np.float32)
                for name in names}
    return Reencoded(
        ids=np.array([record.id for record, _, _ in chosen], np.int64), features=features,
        kinds=[kind for _, kind, _ in chosen],
        requeried={record.id: source for record, kind, source in chosen if kind in ("seen", "latest")},
        lost=lost)
