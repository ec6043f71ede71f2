"""Tracking a whole clip: online (frame by frame, as a live camera) or offline.

Both return `ClipTracks` in the clip's own pixels. Queries are (t, x, y): the
query frame index and the pixel position on that frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from bootstap_ros.backends.torch_backend import inference_model
from bootstap_ros.model.tapir import TAPIR, preprocess_frames, resize_video, visibility
from bootstap_ros.tracking.tracker import CausalTracker


@dataclass
class ClipTracks:
    """tracks [N, T, 2] (x, y pixels), occluded [N, T], logits [N, T].

    Online tracks hold NaN (and occluded True) before each point's query frame.
    """

    tracks: np.ndarray
    occluded: np.ndarray
    occlusion_logits: np.ndarray
    expected_dist_logits: np.ndarray

    def save(self, path) -> None:
        np.savez(path, tracks=self.tracks.astype(np.float32), occluded=self.occluded.astype(bool),
                 occlusion_logits=self.occlusion_logits.astype(np.float32),
                 expected_dist_logits=self.expected_dist_logits.astype(np.float32))


def _query_frames(queries: np.ndarray) -> np.ndarray:
    frames = queries[:, 0]
    if not np.all(frames == np.round(frames)) or np.any(frames < 0):
        raise ValueError("query frame indices must be non-negative integers")
    return frames.astype(np.int64)


def track_online(model: TAPIR, frames: Iterable[np.ndarray], queries: np.ndarray,
                 device: str = "cpu", block_size: Optional[int] = None, progress=None, backend="auto",
                 precision: str = "auto", network_every: int = 1, propagation_config=None,
                 **backend_options) -> ClipTracks:
    """Run the causal tracker frame by frame; each point starts on its query frame.

    frames: iterable of uint8 RGB [H, W, 3]; queries [N, 3] (t, x, y).
    `progress` (optional) is called once per frame; backend, precision and
    backend_options go to `CausalTracker`.
    network_every: run the network on every K-th frame only (and on frames where points start);
    the frames between are answered by propagation (`tracking.propagation`), as the node answers
    a camera faster than the network. Their logits are the network's last.
    """
    if network_every < 1:
        raise ValueError(f"network_every must be >= 1, got {network_every}")
    queries = np.asarray(queries, np.float32).reshape(-1, 3)
    query_frame = _query_frames(queries)
    n = len(queries)
    tracker = CausalTracker(model, max_points=max(n, 1), device=device, block_size=block_size,
                            backend=backend, precision=precision, **backend_options)
    propagator = None
    if network_every > 1:
        from bootstap_ros.tracking.propagation import Propagator

        propagator = Propagator(propagation_config)
    columns = {}  # id -> query index
    rows = []
    logits = {}  # id -> the network's last (occlusion, expected distance) logits
    for t, frame in enumerate(frames):
        starting = np.flatnonzero(query_frame == t)
        if propagator is not None:
            propagator.advance(t, frame)
        if propagator is None or len(starting) or t % network_every == 0:
            result = tracker.step(frame, add=queries[starting, 1:] if len(starting) else None)
            for point_id, index in zip(result.new_ids, starting):
                columns[int(point_id)] = index
            logits.update({int(i): (o, e) for i, o, e in zip(result.ids, result.occlusion_logit,
                                                               result.expected_dist_logit)})
            if propagator is not None:
                propagator.fuse(t, result.ids, result.xy, result.occlusion, result.uncertainty, result.visible,
                                complete=True)
        answer = result if propagator is None else propagator.estimate()
        ids, xy, visible = answer.ids, answer.xy, answer.visible
        # This frame's logits (the network's last for each point), copied now: later steps replace them.
        rows.append((ids, xy, visible, np.array([logits[int(i)] for i in ids], np.float32).reshape(-1, 2)))
        if progress is not None:
            progress()
    num_frames = len(rows)
    if n and query_frame.max() >= num_frames:
        raise ValueError(f"a query frame ({query_frame.max()}) is beyond the clip's {num_frames} frames")
    tracks = np.full((n, num_frames, 2), np.nan, np.float32)
    occ = np.full((n, num_frames), np.nan, np.float32)
    expd = np.full((n, num_frames), np.nan, np.float32)
    occluded = np.ones((n, num_frames), bool)
    for t, (ids, xy, visible, frame_logits) in enumerate(rows):
        index = np.array([columns[int(i)] for i in ids], np.int64)
        tracks[index, t] = xy
        occ[index, t] = frame_logits[:, 0]
        expd[index, t] = frame_logits[:, 1]
        occluded[index, t] = ~visible
    return ClipTracks(tracks, occluded, occ, expd)


@torch.inference_mode()
def track_offline(model: TAPIR, video: np.ndarray, queries: np.ndarray, device: str = "cpu",
                  query_chunk_size: Optional[int] = None) -> ClipTracks:
    """The model's whole-clip forward with the query points given.

    video: uint8 RGB [T, H, W, 3]; queries [N, 3] (t, x, y) in its pixels.
    Frames are resized to the model resolution (and, with a refinement ladder, to every
    further level's) one at a time, each from the input frame (the same bilinear resize
    the model would do), so long clips do not need a float copy in memory.
    """
    queries = np.asarray(queries, np.float32).reshape(-1, 3)
    _query_frames(queries)
    num_frames, height, width = video.shape[:3]
    if len(queries) and queries[:, 0].max() >= num_frames:
        raise ValueError(f"a query frame ({int(queries[:, 0].max())}) is beyond the clip's {num_frames} frames")
    model = inference_model(model, device)  # the caller's model stays where and as it is
    model_h, model_w = model.config.resolution
    resized = tuple(torch.cat([
        resize_video(preprocess_frames(torch.from_numpy(np.ascontiguousarray(f)).to(device)[None, None]), size)
        for f in video
    ], dim=1) for size in model.config.grid_resolutions)
    scale = np.array([1.0, model_h / height, model_w / width], np.float32)
    tyx = queries[:, [0, 2, 1]] * scale
    if query_chunk_size is None:
        # The cost volume holds 16 channels per point, frame and lowres cell: bound it to ~1 GB.
        cells = (model_h // 8) * (model_w // 8)
        query_chunk_size = int(np.clip(1e9 / (num_frames * cells * 16 * 4), 1, 64))
    result = model(resized, torch.from_numpy(tyx)[None].to(device), query_chunk_size=query_chunk_size)
    to_pixels = torch.tensor([width / model_w, height / model_h], device=device)
    tracks = (result.tracks * to_pixels)[0].cpu().numpy()
    occluded = ~visibility(result.occlusion, result.expected_dist)[0].cpu().numpy()
    return ClipTracks(tracks, occluded, result.occlusion[0].cpu().numpy(),
                      result.expected_dist[0].cpu().numpy())
