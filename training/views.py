"""The student's degraded view of a clip, for BootsTAP bootstrapping.

The teacher sees the clean clip; the student sees each frame JPEG-compressed at
a random quality, then resized smaller and pasted on black at an offset that
moves linearly over time (BootsTAP, Sec. "video degradations"; the seed notes
5.5). Geometry is a per-frame affine map of positions,

    student_xy = A[t, :, :2] @ teacher_xy + A[t, :, 2]

in TAPIR's raster (pixel centres at +0.5, x right, y down). `apply_affine` and
`invert_affine` move pseudo-labels and predictions between the two views; the
rendering uses the same matrices, shifted by half a pixel to OpenCV's
convention (pixel centres at integers), so pixels land exactly where the map
says.

This module owns the view (sampling, rendering, mapping); nothing here knows
about models or losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

Size = Union[int, Sequence[int]]


@dataclass(frozen=True)
class ViewConfig:
    """How the student's view is degraded.

    The paper gives the form of each degradation but not its ranges; the ranges
    below are this project's choice (a student frame of half to nine tenths of
    the clip size leaves room for the offset to move; JPEG from very visible to
    mild artefacts).
    """

    # Student frame side as a fraction of the clip side, drawn uniformly once per
    # clip (the paper: "resized to a smaller resolution"; range: project choice).
    min_scale: float = 0.5
    max_scale: float = 0.9
    # Per-frame affine map; False = identity view (the paper's "no affine" ablation).
    affine: bool = True
    # JPEG before pasting (the paper); False = the "no JPEG" ablation.
    jpeg: bool = True
    # JPEG quality, drawn uniformly per frame from [min, max] (project choice).
    jpeg_quality: Tuple[int, int] = (15, 95)

    def __post_init__(self):
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"ViewConfig needs 0 < min_scale <= max_scale <= 1, got min_scale="
                             f"{self.min_scale}, max_scale={self.max_scale}")
        quality = tuple(int(q) for q in self.jpeg_quality)
        if len(quality) != 2 or not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"ViewConfig.jpeg_quality must be (low, high) with 1 <= low <= high <= 100, "
                             f"got {self.jpeg_quality}")
        object.__setattr__(self, "jpeg_quality", quality)


def _height_width(size: Size) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = (int(v) for v in size)
    return height, width


def identity_affine(num_frames: int) -> np.ndarray:
    """[T, 2, 3] float64 identity maps."""
    return np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (num_frames, 1, 1))


def sample_affine(rng: np.random.Generator, num_frames: int, size: Size,
                  config: ViewConfig = ViewConfig()) -> np.ndarray:
    """Per-frame maps teacher raster -> student raster: [T, 2, 3] float64.

    One scale s for the clip; the scaled frame's top-left corner moves linearly
    from o0 to o1 (each drawn uniformly where the whole scaled frame stays inside
    the canvas): A[t] = [[s, 0, ox(t)], [0, s, oy(t)]]. `size` is the clip side
    (or (height, width)). Identity when `config.affine` is False.
    """
    if num_frames < 1:
        raise ValueError(f"sample_affine needs num_frames >= 1, got {num_frames}")
    if not config.affine:
        return identity_affine(num_frames)
    height, width = _height_width(size)
    scale = rng.uniform(config.min_scale, config.max_scale)
    room = np.array([width, height], dtype=np.float64) * (1.0 - scale)  # free space per axis (x, y)
    start, end = rng.uniform(0.0, 1.0, (2, 2)) * room
    fraction = np.arange(num_frames) / max(num_frames - 1, 1)
    offsets = start + (end - start) * fraction[:, None]  # [T, 2] (x, y)
    affine = np.zeros((num_frames, 2, 3))
    affine[:, 0, 0] = affine[:, 1, 1] = scale
    affine[:, :, 2] = offsets
    return affine


def apply_affine(xy, affine):
    """Map positions: xy [..., T, 2] (torch or numpy), affine [..., T, 2, 3].

    The affine's leading dims broadcast against xy's as numpy does (aligned on
    the right), so tracks [B, N, T, 2] take affines [B, 1, T, 2, 3]
    (see `map_tracks`). Returns the type, dtype and device of xy.
    """
    if isinstance(xy, torch.Tensor):
        affine = torch.as_tensor(affine, dtype=xy.dtype, device=xy.device)
        return torch.matmul(affine[..., :2], xy[..., None])[..., 0] + affine[..., 2]
    xy = np.asarray(xy)
    affine = np.asarray(affine)
    dtype = np.result_type(xy.dtype, np.float32)
    return (np.matmul(affine[..., :2], xy[..., None])[..., 0] + affine[..., 2]).astype(dtype, copy=False)


def invert_affine(affine):
    """The inverse maps (student -> teacher), same shape and type as `affine`."""
    a, b, c = affine[..., 0, 0], affine[..., 0, 1], affine[..., 0, 2]
    d, e, f = affine[..., 1, 0], affine[..., 1, 1], affine[..., 1, 2]
    det = a * e - b * d
    lib = torch if isinstance(affine, torch.Tensor) else np
    if bool(lib.any(lib.abs(det) < 1e-12)):
        raise ValueError("invert_affine: a map is singular (determinant ~ 0)")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    rows = [lib.stack([ia, ib, -(ia * c + ib * f)], -1), lib.stack([id_, ie, -(id_ * c + ie * f)], -1)]
    return lib.stack(rows, -2)


def map_tracks(tracks: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """tracks [B, N, T, 2] mapped by per-clip affines [B, T, 2, 3] (same for every point)."""
    return apply_affine(tracks, affines[:, None])


def map_queries(queries: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """Queries [B, N, 3] (t, y, x) mapped by affines [B, T, 2, 3], each by its own frame's map."""
    frames = queries[..., 0].round().long().clamp(0, affines.shape[1] - 1)  # [B, N]
    per_point = torch.gather(affines.to(queries.dtype), 1,
                             frames[..., None, None].expand(-1, -1, 2, 3))  # [B, N, 2, 3]
    xy = apply_affine(queries[..., [2, 1]], per_point)
    return torch.stack([queries[..., 0], xy[..., 1], xy[..., 0]], -1)


def _opencv_matrix(affine: np.ndarray) -> np.ndarray:
    """A TAPIR-raster map as OpenCV's (pixel centres at integers): u_cv = u - 0.5 on both sides."""
    matrix = np.array(affine, dtype=np.float64)
    matrix[:, 2] += matrix[:, :2].sum(axis=1) * 0.5 - 0.5
    return matrix


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB uint8 frame as JPEG at `quality` and decode it (RGB uint8)."""
    # OpenCV codes BGR; swap so the chroma subsampling acts on the right channels.
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]),
                            [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for a frame of shape {frame.shape}")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def render_student_clip(frames: np.ndarray, affine: np.ndarray, config: ViewConfig = ViewConfig(),
                        rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The student's frames: uint8 [T, H, W, 3] RGB in, same shape out.

    Each frame is JPEG-compressed at a random quality (when config.jpeg; before
    any resizing, as the paper does), then warped by its map onto a black canvas
    of the same size (bilinear). Pixels outside the pasted frame are 0. There is
    no anti-aliasing filter, as in the model's own input resize (bilinear, no
    antialias), which the student meets at inference.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"render_student_clip expects uint8 frames [T, H, W, 3], got {frames.dtype} "
                         f"{frames.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (frames.shape[0], 2, 3):
        raise ValueError(f"render_student_clip expects one [2, 3] map per frame ({frames.shape[0]}), "
                         f"got affine of shape {affine.shape}")
    if config.jpeg and rng is None:
        raise ValueError("render_student_clip needs an rng to draw JPEG qualities (config.jpeg is True)")
    height, width = frames.shape[1:3]
    out = np.empty_like(frames)
    identity = identity_affine(1)[0]
    for t, frame in enumerate(frames):
        if config.jpeg:
            frame = jpeg_roundtrip(frame, rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        if np.array_equal(affine[t], identity):
            out[t] = frame
            continue
        out[t] = cv2.warpAffine(np.ascontiguousarray(frame), _opencv_matrix(affine[t]), (width, height),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def student_batch(videos: torch.Tensor, config: ViewConfig = ViewConfig(),
                  rng: Optional[np.random.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Student views of a batch: videos uint8 [B, T, H, W, 3] (torch) ->
    (student videos uint8 [B, T, H, W, 3] on the same device, affines float32 [B, T, 2, 3]).

    The affines map the clip's raster to the student's; rendering runs on the CPU
    (OpenCV), so call it in the data pipeline or accept one host round trip.
    """
    if rng is None:
        rng = np.random.default_rng()
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != torch.uint8:
        raise ValueError(f"student_batch expects uint8 videos [B, T, H, W, 3], got {videos.dtype} "
                         f"{tuple(videos.shape)}")
    clips = videos.detach().cpu().numpy()
    height, width = clips.shape[2:4]
    rendered, affines = [], []
    for clip in clips:
        affine = sample_affine(rng, clip.shape[0], (height, width), config)
        rendered.append(render_student_clip(clip, affine, config, rng))
        affines.append(affine)
    student = torch.from_numpy(np.stack(rendered)).to(videos.device)
    return student, torch.from_numpy(np.stack(affines).astype(np.float32)).to(videos.device)
