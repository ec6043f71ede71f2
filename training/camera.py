"""A camera and sensor model applied to labelled training clips (augmentation).

Kubric-lite renders what an ideal pinhole camera with a clean sensor would see. Real
cameras add optics, a noisy sensor, an image pipeline and a codec. `apply_camera` passes
one clip through such a camera, in the order light meets them:

1. motion blur along the motion: a centred line kernel along the median displacement of
   the visible tracks since the previous frame, as long as the exposure time lets it move;
2. the lens: radial (Brown, k1 and k2) or equidistant fisheye distortion, resampled
   exactly (`RadialLens`); the tracks are mapped through the same lens and points that
   leave the picture (or its dark corners) become occluded;
3. defocus (a Gaussian blur) and vignetting (brightness falling off with the radius);
4. the sensor: per-channel sensitivity (colour of the light), exposure with
   frame-to-frame auto-exposure hunting, photon (shot) noise and read noise in electrons;
5. the image pipeline: an imperfect white balance, gain, a tone curve (gamma);
6. compression: JPEG per frame, the quality wandering from frame to frame as a video
   codec's does (4:2:0 chroma, 8x8 blocks).

Every effect has a probability and a range in `CameraConfig`. Blurs use centred kernels,
so they change colours, not where a point is; only the lens moves points, and it moves
tracks and pixels through one map. With every probability 0 the clip comes back
bit-identical. The same seed gives the same clip.

Coordinates: TAPIR raster, the top-left corner of the top-left pixel is (0, 0), pixel
centres at +0.5 (as `domains.synthetic`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

# Bisection steps inverting a radial map: the bracket shrinks 2**-60, far below float64 pixels.
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class CameraConfig:
    """Probabilities (per clip) and ranges (inclusive, drawn uniformly per clip unless said)."""

    # Motion blur: exposure time as a fraction of the frame interval.
    motion_blur_probability: float = 0.3
    exposure_time: Tuple[float, float] = (0.2, 1.0)
    # Lens: a share of the lensed clips is fisheye, the rest radial (Brown).
    lens_probability: float = 0.3
    fisheye_share: float = 0.4
    # Brown: source radius = r * (1 + k1 rho^2 + k2 rho^4), rho = r / half diagonal.
    # k1 > 0 bulges the picture (barrel: dark corners where the render ends), < 0 pinches.
    k1: Tuple[float, float] = (-0.2, 0.35)
    k2: Tuple[float, float] = (-0.05, 0.1)
    # Fisheye (equidistant): the render's half diagonal spans this half angle (degrees);
    # the picture's half diagonal spans it times `fisheye_reach` (> 1: dark corners).
    fisheye_render_angle: Tuple[float, float] = (35.0, 60.0)
    fisheye_reach: Tuple[float, float] = (1.0, 1.4)
    # Defocus: Gaussian sigma in pixels.
    defocus_probability: float = 0.3
    defocus_sigma: Tuple[float, float] = (0.4, 1.5)
    # Vignetting: share of brightness lost at the corners.
    vignetting_probability: float = 0.3
    vignetting: Tuple[float, float] = (0.1, 0.5)
    # Sensor noise: electrons collected from a white surface (log-uniform; 30 is a dark
    # scene, 3000 daylight) and read noise in electrons.
    noise_probability: float = 0.6
    white_electrons: Tuple[float, float] = (30.0, 3000.0)
    read_noise: Tuple[float, float] = (1.0, 4.0)
    # Exposure: overall brightness (log-uniform) and the auto exposure's frame-to-frame
    # hunting (std of the log gain's random walk per frame).
    exposure_probability: float = 0.5
    brightness: Tuple[float, float] = (0.35, 1.4)
    exposure_flicker: Tuple[float, float] = (0.0, 0.08)
    # Colour: sensor sensitivity per channel (red and blue relative to green) and the
    # white balance's residual error (std of the log channel gain), drifting over the clip.
    colour_probability: float = 0.5
    channel_sensitivity: Tuple[float, float] = (0.3, 1.0)
    white_balance_error: float = 0.15
    white_balance_drift: float = 0.08
    # Tone curve: output = input ** gamma.
    gamma_probability: float = 0.3
    gamma: Tuple[float, float] = (0.7, 1.4)
    # Compression: JPEG quality per clip, and its wander from frame to frame.
    compression_probability: float = 0.5
    jpeg_quality: Tuple[float, float] = (15.0, 90.0)
    quality_wander: float = 10.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_probability") or field.name == "fisheye_share":
                if not 0 <= value <= 1:
                    raise ValueError(f"{field.name} must lie in [0, 1], got {value}")
            elif isinstance(value, tuple):
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"{field.name} must be a range (low, high) with low <= high, got {value}")
        if self.k1[0] <= -1 / 3 or self.k2[0] < -0.1:
            raise ValueError("k1 must stay above -1/3 and k2 above -0.1 so that the lens is one-to-one")
        if not (0 < self.fisheye_render_angle[0] and self.fisheye_render_angle[1] < 89
                and self.fisheye_reach[0] >= 1):
            raise ValueError("fisheye_render_angle must lie in (0, 89) degrees and fisheye_reach be at least 1")
        if min(self.white_electrons) <= 0 or not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("white_electrons must be positive and jpeg_quality lie in [1, 100]")

    @classmethod
    def off(cls) -> "CameraConfig":
        """Every effect off: `apply_camera` returns the clip unchanged."""
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls) if f.name.endswith("_probability")})

    def replace(self, **changes) -> "CameraConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- the lens

@dataclass(frozen=True)
class RadialLens:
    """A radially symmetric lens about the image centre, as a map from the picture (what the
    camera outputs) to the render (the ideal pinhole image of the same size).

    `source_radius(r)` is closed-form; the render-to-picture direction inverts it by
    bisection on [0, `max_radius`], where it is strictly increasing.
    kind "brown": source = r (1 + k1 rho^2 + k2 rho^4), rho = r / half diagonal.
    kind "fisheye": the picture is equidistant (r = f theta), the render a pinhole
    (source = f_render tan theta).
    """

    kind: str
    height: int
    width: int
    k1: float = 0.0
    k2: float = 0.0
    render_angle: float = 45.0   # degrees spanned by the render's half diagonal (fisheye)
    picture_angle: float = 45.0  # degrees spanned by the picture's half diagonal (fisheye)

    @property
    def half_diagonal(self) -> float:
        return float(np.hypot(self.width, self.height) / 2)

    @property
    def max_radius(self) -> float:
        """The picture radius up to which the map is strictly increasing (at most twice the
        half diagonal); a pinching lens never shows render points beyond its image."""
        if self.kind != "brown":
            return 2.0 * self.half_diagonal
        rho = np.linspace(0.0, 2.0, 4001)
        slope = 1 + 3 * self.k1 * rho ** 2 + 5 * self.k2 * rho ** 4
        falling = np.flatnonzero(slope <= 0)
        return float(rho[falling[0] - 1] if len(falling) else 2.0) * self.half_diagonal

    def source_radius(self, radius: np.ndarray) -> np.ndarray:
        radius = np.asarray(radius, np.float64)
        if self.kind == "brown":
            rho2 = (radius / self.half_diagonal) ** 2
            return radius * (1 + self.k1 * rho2 + self.k2 * rho2 ** 2)
        if self.kind == "fisheye":
            theta = radius / self.half_diagonal * np.radians(self.picture_angle)
            focal_render = self.half_diagonal / np.tan(np.radians(self.render_angle))
            # Beyond 89 degrees the pinhole render is unbounded: far outside any image.
            return focal_render * np.tan(np.minimum(theta, np.radians(89.0)))
        raise ValueError(f"lens kind must be brown or fisheye, got {self.kind!r}")

    def picture_radius(self, source: np.ndarray) -> np.ndarray:
        source = np.asarray(source, np.float64)
        if self.kind == "fisheye":
            focal_render = self.half_diagonal / np.tan(np.radians(self.render_angle))
            theta = np.arctan(source / focal_render)
            return theta / np.radians(self.picture_angle) * self.half_diagonal
        low = np.zeros_like(source)
        high = np.full_like(source, self.max_radius)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            below = self.source_radius(middle) < source
            low = np.where(below, middle, low)
            high = np.where(below, high, middle)
        # Render radii the lens never shows come back far outside the picture.
        beyond = source > self.source_radius(self.max_radius)
        return np.where(beyond, 4.0 * self.half_diagonal, (low + high) / 2)

    def _centre(self) -> np.ndarray:
        return np.array([self.width / 2, self.height / 2])

    def _scale(self, points: np.ndarray, radial) -> np.ndarray:
        offset = np.asarray(points, np.float64) - self._centre()
        radius = np.linalg.norm(offset, axis=-1, keepdims=True)
        mapped = radial(radius)
        ratio = np.where(radius > 1e-12, mapped / np.maximum(radius, 1e-12), 1.0)
        if self.kind == "fisheye":  # the slope at the centre, where the ratio is 0/0
            focal_render = self.half_diagonal / np.tan(np.radians(self.render_angle))
            slope = focal_render * np.radians(self.picture_angle) / self.half_diagonal
            ratio = np.where(radius > 1e-12, ratio, slope if radial == self.source_radius else 1 / slope)
        return self._centre() + offset * ratio

    def to_render(self, points: np.ndarray) -> np.ndarray:
        """Picture raster points [..., 2] -> render raster points."""
        return self._scale(points, self.source_radius)

    def to_picture(self, points: np.ndarray) -> np.ndarray:
        """Render raster points [..., 2] -> picture raster points (the tracks' map)."""
        return self._scale(points, self.picture_radius)

    def warp(self, frames: np.ndarray) -> np.ndarray:
        """Resamples float32 frames [T, H, W, C] (the render) into the picture; black where
        the picture sees past the render."""
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float64) + 0.5
        source = self.to_render(np.stack([xs, ys], axis=-1)) - 0.5  # raster -> OpenCV sampling
        map_x, map_y = source[..., 0].astype(np.float32), source[..., 1].astype(np.float32)
        return np.stack([cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=0).reshape(frame.shape) for frame in frames])

    def seen(self) -> np.ndarray:
        """bool [H, W]: picture pixels whose centre sees the render (not a dark corner)."""
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float64) + 0.5
        source = self.to_render(np.stack([xs, ys], axis=-1))
        return ((source[..., 0] >= 0) & (source[..., 0] < self.width)
                & (source[..., 1] >= 0) & (source[..., 1] < self.height))


def sample_lens(rng: np.random.Generator, config: CameraConfig, height: int, width: int) -> RadialLens:
    if rng.random() < config.fisheye_share:
        render_angle = rng.uniform(*config.fisheye_render_angle)
        picture_angle = min(render_angle * rng.uniform(*config.fisheye_reach), 88.0)
        return RadialLens("fisheye", height, width, render_angle=render_angle, picture_angle=picture_angle)
    return RadialLens("brown", height, width, k1=rng.uniform(*config.k1), k2=rng.uniform(*config.k2))


# ----------------------------------------------------------------------------- photometry

def _motion_blur(frame: np.ndarray, velocity: np.ndarray, exposure: float) -> np.ndarray:
    """A centred line kernel along `velocity` (px per frame) times `exposure`."""
    length = float(np.linalg.norm(velocity)) * exposure
    if length < 1.0:
        return frame
    size = int(np.ceil(length)) | 1  # odd: the kernel's centre is a pixel centre
    kernel = np.zeros((size, size), np.float32)
    centre = (size - 1) / 2
    direction = velocity / np.linalg.norm(velocity)
    # Samples along the segment with bilinear weights keep the kernel centred to sub-pixel precision.
    for step in np.linspace(-length / 2, length / 2, 4 * size + 1):
        x, y = centre + step * direction
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                               (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += weight
    return cv2.filter2D(frame, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _track_motion(tracks: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """Median displacement [T, 2] of the tracks visible in a frame and the one before."""
    frames = tracks.shape[1]
    motion = np.zeros((frames, 2))
    for t in range(1, frames):
        both = ~occluded[:, t] & ~occluded[:, t - 1]
        if both.any():
            motion[t] = np.median(tracks[both, t] - tracks[both, t - 1], axis=0)
    motion[0] = motion[1] if frames > 1 else 0
    return motion


def _log_uniform(rng: np.random.Generator, bounds) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a frame")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


# ----------------------------------------------------------------------------- the clip

def _requery(occluded: np.ndarray, query_frames: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Query frames that are visible after the lens (the first visible frame at or after the
    old one, else the first visible at all), and which tracks are visible anywhere."""
    frames = occluded.shape[1]
    order = np.arange(frames)
    visible_any = (~occluded).any(axis=1)
    new = query_frames.copy()
    for index in np.flatnonzero(occluded[np.arange(len(query_frames)), query_frames]):
        later = np.flatnonzero(~occluded[index] & (order >= query_frames[index]))
        anywhere = np.flatnonzero(~occluded[index])
        if len(later):
            new[index] = later[0]
        elif len(anywhere):
            new[index] = anywhere[0]
    return new, visible_any


def apply_camera(arrays: Dict[str, np.ndarray], config: CameraConfig,
                 rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """`arrays` as `data.clip_arrays` gives them (video uint8 [T, H, W, 3], query_points
    [N, 3] (t, y, x), target_points [N, T, 2] (x, y), occluded bool [N, T]) seen through a
    random camera drawn from `config` with `rng`. The input is not modified.

    Tracks that the lens pushes out of view in every frame are replaced by copies of
    tracks that stay in view (so N stays fixed); queries that end up hidden move to the
    track's first visible frame.
    """
    video = arrays["video"]
    frames, height, width = video.shape[:3]
    draws = {name: rng.random() < getattr(config, f"{name}_probability") for name in (
        "motion_blur", "lens", "defocus", "vignetting", "noise", "exposure", "colour", "gamma", "compression")}
    if not any(draws.values()):
        return arrays
    tracks = arrays["target_points"].astype(np.float64)
    occluded = arrays["occluded"].copy()
    query_points = arrays["query_points"].copy()
    image = video.astype(np.float32) / 255

    if draws["motion_blur"]:
        exposure = rng.uniform(*config.exposure_time)
        motion = _track_motion(tracks, occluded)
        image = np.stack([_motion_blur(image[t], motion[t], exposure) for t in range(frames)])
    if draws["lens"]:
        lens = sample_lens(rng, config, height, width)
        image = lens.warp(image)
        tracks = lens.to_picture(tracks)
        seen = lens.seen()
        column = np.clip(np.floor(tracks[..., 0]), 0, width - 1).astype(int)
        row = np.clip(np.floor(tracks[..., 1]), 0, height - 1).astype(int)
        inside = ((tracks[..., 0] >= 0) & (tracks[..., 0] < width) & (tracks[..., 1] >= 0)
                  & (tracks[..., 1] < height))
        occluded |= ~(inside & seen[row, column])
        query_frames, usable = _requery(occluded, np.round(query_points[:, 0]).astype(int))
        if usable.any():
            keep = np.flatnonzero(usable)
            source = np.arange(len(usable))
            source[~usable] = keep[rng.integers(0, len(keep), int((~usable).sum()))]
            tracks, occluded, query_frames = tracks[source], occluded[source], query_frames[source]
        index = np.arange(len(query_frames))
        query_points = np.stack([query_frames, tracks[index, query_frames, 1], tracks[index, query_frames, 0]],
                                axis=1).astype(np.float32)
    if draws["defocus"]:
        sigma = rng.uniform(*config.defocus_sigma)
        image = np.stack([cv2.GaussianBlur(frame, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
                          for frame in image])
    if draws["vignetting"]:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + np.float32(0.5)
        rho2 = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / np.float32((width / 2) ** 2 + (height / 2) ** 2)
        image = image * (1 - np.float32(rng.uniform(*config.vignetting)) * rho2)[None, ..., None]

    # The sensor: linear light times the channel sensitivity and the exposure, in electrons.
    sensitivity = np.ones(3)
    if draws["colour"]:
        sensitivity = np.array([rng.uniform(*config.channel_sensitivity), 1.0,
                                rng.uniform(*config.channel_sensitivity)])
    gain = np.ones(frames)
    if draws["exposure"]:
        walk = np.cumsum(rng.normal(0, rng.uniform(*config.exposure_flicker), frames))
        gain = _log_uniform(rng, config.brightness) * np.exp(walk - walk.mean())
    image = image * sensitivity.astype(np.float32)
    if draws["noise"]:
        white = _log_uniform(rng, config.white_electrons)
        read = rng.uniform(*config.read_noise)
        electrons = np.clip(image, 0, None) * np.float32(white)
        std = np.sqrt(electrons + np.float32(read ** 2))
        image = (electrons + std * rng.standard_normal(image.shape, dtype=np.float32)) / np.float32(white)
    # White balance: divides by the sensitivity it estimates, a little wrong and drifting.
    estimate = sensitivity[None, :] * np.ones((frames, 1))
    if draws["colour"]:
        start = np.exp(rng.normal(0, config.white_balance_error, 3))
        end = start * np.exp(rng.normal(0, config.white_balance_drift, 3))
        estimate = estimate * (start + (end - start) * np.linspace(0, 1, frames)[:, None])
    image = image * (gain[:, None] / estimate).astype(np.float32)[:, None, None, :]
    image = np.clip(image, 0, 1)
    if draws["gamma"]:
        image = image ** np.float32(rng.uniform(*config.gamma))
    video_out = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    if draws["compression"]:
        quality = rng.uniform(*config.jpeg_quality)
        wander = rng.uniform(-config.quality_wander, config.quality_wander, frames)
        video_out = np.stack([_jpeg(frame, int(np.clip(round(quality + w), 1, 100)))
                              for frame, w in zip(video_out, wander)])
    return {**arrays, "video": video_out, "query_points": query_points,
            "target_points": tracks.astype(np.float32), "occluded": occluded}


def camera_rng(clip_seed: int) -> np.random.Generator:
    """The camera's random stream for a clip: apart from the clip generator's own stream."""
    return np.random.default_rng([clip_seed, 0x63616D])  # "cam"
