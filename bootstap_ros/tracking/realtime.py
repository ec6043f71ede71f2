"""RealtimeTracker: a CausalTracker that answers every camera frame as it arrives.

The network runs in a worker thread on the newest frame whenever it is free (a frame that
carries points to add is never skipped: their query features come from it). With
``propagation="lk"`` every frame is answered at once by the `Propagator`
(`tracking.propagation`): points carried from the previous frame, each network result fused in
when it lands. With ``propagation="none"`` only the network answers, for the frames it took (the
node's behaviour before propagation). The caller never waits for the network.

Ids are the tracker's: points added on a frame get the next ids in order, as the tracker gives
them when the worker reaches that frame.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from bootstap_ros.tracking.frames import to_rgb
from bootstap_ros.tracking.propagation import Estimate, PropagationConfig, Propagator

LOG = logging.getLogger(__name__)
PROPAGATION_CHOICES = ("lk", "none")


@dataclass
class _Pending:
    index: int
    rgb: np.ndarray
    add: Optional[np.ndarray]
    ids: Optional[np.ndarray]


class RealtimeTracker:
    """Frames in with `submit`, answers out: at once (propagation) and when the network lands.

    on_network(index, result, seconds): called in the worker thread with each network result
    (a `TrackResult` for frame `index`) after it is fused; `seconds` is the step's wall time.
    """

    def __init__(self, tracker, propagation: str = "lk", config: Optional[PropagationConfig] = None,
                 on_network: Optional[Callable] = None, clock=time.monotonic):
        if propagation not in PROPAGATION_CHOICES:
            raise ValueError(f"propagation must be one of {PROPAGATION_CHOICES}, got {propagation!r}")
        self.tracker = tracker
        self.propagation = propagation
        self.propagator = Propagator(config) if propagation == "lk" else None
        self.on_network = on_network
        self.clock = clock
        self.counts = {"frames": 0, "network": 0, "propagated": 0, "skipped": 0}
        self.error: Optional[BaseException] = None
        self._next_id = tracker.next_id
        self._lock = threading.Lock()  # the propagator and the counts
        self._wake = threading.Condition()
        self._pending: List[_Pending] = []
        self._index = -1
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="network", daemon=True)
        self._worker.start()

    def submit(self, frame: np.ndarray, encoding: str = "rgb8", add=None) -> Optional[Estimate]:
        """A new camera frame (and optional pixel positions [K, 2] of points to add on it).

        Returns the estimate for this frame at once with propagation, else None (the network's
        answer comes through on_network). Raises the worker's error, if it failed."""
        if self.error is not None:
            raise RuntimeError(f"the network worker failed: {self.error}") from self.error
        rgb = to_rgb(frame, encoding)
        add = None if add is None or not len(add) else np.asarray(add, np.float32).reshape(-1, 2)
        ids = None
        if add is not None:
            ids = np.arange(self._next_id, self._next_id + len(add), dtype=np.int64)
            self._next_id += len(add)
        self._index += 1
        index = self._index
        estimate = None
        if self.propagator is not None:
            with self._lock:
                estimate = self.propagator.advance(index, rgb)
                if add is not None:
                    self.propagator.add(ids, add)
                    estimate = self.propagator.estimate()
                self.counts["propagated"] += 1
        with self._wake:
            self.counts["frames"] += 1
            self._pending.append(_Pending(index, rgb, add, ids))
            self._wake.notify()
        return estimate

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (after the step it is in)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._worker.join(timeout)

    def _take(self) -> Optional[_Pending]:
        """The next frame for the network: the oldest that adds points, else the newest; the
        frames passed over are dropped."""
        with self._wake:
            while not self._pending and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            adding = [p for p in self._pending if p.add is not None]
            chosen = adding[0] if adding else self._pending[-1]
            position = self._pending.index(chosen)
            self.counts["skipped"] += sum(1 for p in self._pending[:position] if p.add is None)
            self._pending = [p for p in self._pending[position + 1:]]
            return chosen

    def _run(self) -> None:
        try:
            while True:
                job = self._take()
                if job is None:
                    return
                if self.propagator is not None:
                    with self._lock:
                        self.propagator.hold(job.index)
                started = self.clock()
                result = self.tracker.step(job.rgb, add=job.add)
                if job.ids is not None and not np.array_equal(result.new_ids, job.ids):
                    raise RuntimeError(f"the tracker gave ids {result.new_ids[:5].tolist()}..., expected "
                                       f"{job.ids[:5].tolist()}...: points were added outside this tracker")
                if self.propagator is not None:
                    with self._lock:
                        self.propagator.fuse(job.index, result.ids, result.xy, result.occlusion,
                                             result.uncertainty, result.visible)
                with self._lock:
                    self.counts["network"] += 1
                if self.on_network is not None:
                    self.on_network(job.index, result, self.clock() - started)
        except BaseException as error:  # reported by the next submit
            LOG.exception("the network worker failed")
            self.error = error
