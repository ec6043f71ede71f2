"""Two more shifted domains for the bootstrapping experiment: a camera at night, and a fisheye lens.

The robot domain (`training/domains/robot_domain.py`) changes what the scenes show (a table
top, objects, an arm) and adds a cheap sensor's look in daylight. These two keep
Kubric-lite's scenes (its `Scene` sampler, renderer, query sampler and exact tracks are
imported, not copied) and change one thing the model never saw, each of another kind:

``low_light``: a warehouse camera at night, a photometric shift and nothing else.
  Kubric-lite's scenes and camera at 320x240, recorded by a sensor that gets 50 to 150
  photo-electrons for a white surface: Poisson-Gaussian noise (the usual heteroscedastic
  Gaussian form, variance = signal + read noise squared, in electrons) whose
  white-balance gains make the weak red and blue channels noisier than green, blotchy
  colour noise (chroma only, a pixel and a half wide), an auto gain that has run out
  (strong underexposure) and hunts from frame to frame, crushed shadows, a lifted
  black level (low contrast), and the 8-bit banding of a digital brightness boost after
  quantisation. A pixel's value depends on its own clean value and on noise that does
  not depend on the picture, nothing else, so the labels are Kubric-lite's, exactly. Holding the content at the training
  distribution isolates the sensor: `--clean` renders the same clips in daylight.

``wide_angle``: a body or drone camera with a fisheye lens, a geometric shift.
  Kubric-lite's scenes are rendered through a virtual pinhole camera large enough for
  the lens' whole field of view, with a camera that moves about two and a half times as
  fast as Kubric-lite's (in picture widths per frame), and resampled into a 320x240 picture through an equidistant
  fisheye (Kannala-Brandt, OpenCV's `cv2.fisheye` model: ``r = f * theta * (1 + k1
  theta^2 + k2 theta^4)``) with a 120-144 degree field of view across a circular
  image that cuts off the corners, and mild vignetting. Straight lines bend, and an
  object changes shape and speed as it crosses the view. A pinhole point ``p`` goes to
  ``d = distort(p)`` (closed form; ``undistort(d) = p`` to ~1e-13 px by Newton's method,
  which resamples the frames), and so do the tracks; a point whose pixel lies outside
  the image circle is occluded. The periphery, where the lens squeezes up to about ten
  pinhole pixels into one, is sampled from a Gaussian pyramid (trilinear mip-mapping),
  so it does not alias. `--clean` gives the same scenes through a pinhole camera of the
  same focal length at the image centre.

Both follow `bootstap_ros_training.domains.synthetic`'s conventions (TAPIR raster, pixel centres at +0.5; a
point is visible iff inside the image and its own layer shows at its pixel) and are
deterministic per seed. Outputs as the robot domain's, with its seed split (labeled
clips below `UNLABELED_SEED_OFFSET`, unlabeled episodes from it up):

    python -m bootstap_ros_training.domains.shifted_domains labeled --domain low_light --out night.pkl --num-clips 20 --seed 0
    python -m bootstap_ros_training.domains.shifted_domains bag --domain wide_angle --out fisheye_bag --episodes 16 --frames 48
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import cv2
import numpy as np

from .robot_domain import write_bag, write_labeled
from .synthetic import (Clip, SyntheticConfig, occlusion, render_scene, sample_queries, sample_scene,
                        track_surface_points)

# The id given to pixels outside the lens' image circle: no layer has it (Kubric-lite
# scenes have at most 255 layers, 0..254).
OUTSIDE_VIEW = 255


def _check_ranges(config, names) -> None:
    for name in names:
        low, high = getattr(config, name)
        if low > high:
            raise ValueError(f"{name} must be a range (low, high) with low <= high, got {(low, high)}")
    if config.frames < 1 or config.height < 32 or config.width < 32 or config.num_points < 0:
        raise ValueError(f"need frames >= 1, height and width >= 32 and num_points >= 0; got "
                         f"frames={config.frames}, size={config.height}x{config.width}, "
                         f"num_points={config.num_points}")


# ----------------------------------------------------------------------------- low light

@dataclass(frozen=True)
class LowLightConfig:
    """Everything that shapes a low-light clip. Ranges are inclusive; per clip a value is
    drawn from each."""

    frames: int = 24
    height: int = 240
    width: int = 320
    num_points: int = 256
    object_point_fraction: float = 0.5
    # False: the same scenes as Kubric-lite renders them, in daylight (labels unchanged).
    photometric: bool = True
    # Photo-electrons a white surface gives a green pixel in one exposure: the light level.
    electrons: Tuple[float, float] = (50.0, 150.0)
    read_noise: Tuple[float, float] = (1.5, 3.0)         # electrons (Gaussian)
    # Red and blue sensitivity relative to green under the lamp (sodium, LED, ...); the
    # white balance divides by it, so the weaker channel is the noisier one.
    red_sensitivity: Tuple[float, float] = (0.35, 0.9)
    blue_sensitivity: Tuple[float, float] = (0.25, 0.8)
    chroma_noise: Tuple[float, float] = (0.01, 0.03)     # std of colour blotches (linear, white = 1)
    chroma_size: float = 1.5                             # their width (Gaussian sigma, pixels)
    # Linear exposure relative to a normal daylight picture (the auto gain is at its
    # limit), and the auto gain's frame-to-frame hunting.
    exposure: Tuple[float, float] = (0.006, 0.02)
    gain_flicker: float = 0.1
    crush: Tuple[float, float] = (0.005, 0.02)           # linear level (white = 1) under which shadows are black
    pedestal: Tuple[float, float] = (4.0, 14.0)          # output black level (0..255): low contrast
    boost: Tuple[float, float] = (1.5, 2.5)              # digital gain on the 8-bit picture: banding

    def __post_init__(self):
        _check_ranges(self, ("electrons", "read_noise", "red_sensitivity", "blue_sensitivity", "chroma_noise",
                             "exposure", "crush", "pedestal", "boost"))
        if not self.electrons[0] > 0 or not self.exposure[0] > 0 or not self.boost[0] > 0:
            raise ValueError(f"electrons, exposure and boost must be positive, got {self.electrons}, "
                             f"{self.exposure}, {self.boost}")
        if not (self.red_sensitivity[0] > 0 and self.blue_sensitivity[0] > 0):
            raise ValueError(f"channel sensitivities must be positive, got red {self.red_sensitivity} and "
                             f"blue {self.blue_sensitivity}")

    def replace(self, **changes) -> "LowLightConfig":
        return dataclasses.replace(self, **changes)

    def synthetic(self) -> SyntheticConfig:
        """Kubric-lite's config for these scenes. Its own render noise is off: at night
        the sensor's noise is the noise (drawing it still takes the same random numbers,
        so a scene is Kubric-lite's of the same seed and size)."""
        return SyntheticConfig(frames=self.frames, height=self.height, width=self.width,
                               num_points=self.num_points, object_point_fraction=self.object_point_fraction,
                               noise_std=0.0)


# uint8 sRGB-like values -> linear light (gamma 2.2), white = 1.
_LINEAR = np.power(np.arange(256, dtype=np.float64) / 255, 2.2).astype(np.float32)


def low_light_sensor(rng: np.random.Generator, video: np.ndarray, config: LowLightConfig) -> np.ndarray:
    """A night-time camera's picture of a rendered uint8 video [T, H, W, 3] (see the module
    docstring). Per frame, the output is a function of each pixel's own clean value plus
    zero-mean noise: geometry stays exact."""
    frames, height, width = video.shape[:3]
    electrons = np.float32(rng.uniform(*config.electrons))
    read = np.float32(rng.uniform(*config.read_noise))
    sensitivity = np.array([rng.uniform(*config.red_sensitivity), 1.0, rng.uniform(*config.blue_sensitivity)],
                           np.float32)
    chroma = np.float32(rng.uniform(*config.chroma_noise))
    exposure = rng.uniform(*config.exposure)
    crush = np.float32(rng.uniform(*config.crush))
    pedestal = np.float32(rng.uniform(*config.pedestal))
    boost = np.float32(rng.uniform(*config.boost))
    hunting = 1 + np.cumsum(rng.uniform(-1, 1, frames)) * config.gain_flicker / np.sqrt(max(frames, 1))
    gain = (exposure * np.clip(hunting, 0.6, 1.4)).astype(np.float32)
    # White noise blurred by a Gaussian of sigma s keeps 1 / (2 sqrt(pi) s) of its std
    # (at half resolution: s / 2); removing the grey part keeps sqrt(2/3) of the rest.
    chroma_scale = chroma * np.float32(np.sqrt(np.pi) * config.chroma_size * np.sqrt(1.5))
    full = electrons * sensitivity  # electrons of a white surface, per channel
    out = np.empty_like(video)
    for t in range(frames):
        signal = _LINEAR[video[t]] * full
        # Poisson-Gaussian: shot noise (variance = signal) and read noise, in electrons.
        std = np.sqrt(signal + read ** 2)
        counted = signal + std * rng.standard_normal(signal.shape, dtype=np.float32)
        linear = counted / full  # white balance: back to scene units, the weak channels amplified
        # Blotches: smooth noise, drawn at half resolution (they are smooth at that scale).
        coarse = rng.standard_normal((height // 2 + 1, width // 2 + 1, 3), dtype=np.float32)
        coarse = cv2.GaussianBlur(coarse, (0, 0), config.chroma_size / 2)
        blotches = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        grey = (blotches[..., 0] + blotches[..., 1] + blotches[..., 2])[..., None] / 3
        linear += chroma_scale * (blotches - grey)  # colour only, not brightness
        linear = np.maximum(linear - crush, 0) * gain[t]
        eight_bit = np.round(np.power(linear, np.float32(1 / 2.2)) * 255)  # the ISP's 8-bit picture
        out[t] = np.clip(np.round(pedestal + boost * eight_bit), 0, 255).astype(np.uint8)
    return out


def generate_low_light_clip(seed: int, config: LowLightConfig = LowLightConfig()) -> Clip:
    """One low-light clip with exact tracks; the same seed and config give identical arrays,
    and `photometric=False` the same clip in daylight (every label identical)."""
    rng = np.random.default_rng(seed)
    synthetic = config.synthetic()
    scene = sample_scene(rng, synthetic)
    video, layer_ids = render_scene(scene, synthetic)
    if config.photometric:
        video = low_light_sensor(np.random.default_rng(scene.noise_seed), video, config)
    query_frames, track_layers, surface_points = sample_queries(rng, scene, layer_ids, synthetic)
    tracks = track_surface_points(scene, track_layers, surface_points)
    return Clip(video=video, tracks=tracks, occluded=occlusion(tracks, track_layers, layer_ids),
                query_frames=query_frames, track_layers=track_layers, surface_points=surface_points,
                layer_ids=layer_ids, scene=scene, seed=seed)


# ----------------------------------------------------------------------------- wide-angle lens

@dataclass(frozen=True)
class FisheyeLens:
    """An equidistant fisheye with radial terms (Kannala-Brandt, as `cv2.fisheye`) between
    a virtual pinhole image and the picture, both in raster pixels.

    A pinhole point p is the ray ``x = (p - pinhole_centre) / pinhole_focal`` at angle
    ``theta = atan(|x|)`` from the axis; the lens puts it at distance
    ``focal * theta * (1 + k1 theta^2 + k2 theta^4)`` from `centre`, in the direction of x.
    The picture shows what lies within `radius` of `centre` (the image circle).
    """

    focal: float
    k1: float
    k2: float
    centre: Tuple[float, float]
    radius: float
    pinhole_focal: float
    pinhole_centre: Tuple[float, float]

    def _distorted_angle(self, theta):
        theta2 = theta * theta
        return theta * (1 + self.k1 * theta2 + self.k2 * theta2 * theta2)

    def distort(self, points: np.ndarray) -> np.ndarray:
        """Pinhole raster points [..., 2] -> picture raster points (closed form)."""
        ray = (np.asarray(points, np.float64) - self.pinhole_centre) / self.pinhole_focal
        r = np.linalg.norm(ray, axis=-1, keepdims=True)
        theta = np.arctan(r)
        # theta_d / r -> 1 at the axis.
        scale = np.where(r > 1e-12, self._distorted_angle(theta) / np.maximum(r, 1e-12), 1.0)
        return np.asarray(self.centre) + self.focal * scale * ray

    def angle_of(self, points: np.ndarray) -> np.ndarray:
        """The ray angle theta (radians) of picture raster points [..., 2], by Newton's method."""
        rho = np.linalg.norm((np.asarray(points, np.float64) - self.centre) / self.focal, axis=-1)
        theta = rho.copy()
        for _ in range(50):
            theta2 = theta * theta
            slope = 1 + 3 * self.k1 * theta2 + 5 * self.k2 * theta2 * theta2
            step = (self._distorted_angle(theta) - rho) / slope
            theta = np.clip(theta - step, 0.0, 1.5)  # stay in front of the camera (< 86 degrees)
            if not step.size or np.abs(step).max() < 1e-13:
                break
        return theta

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """Picture raster points [..., 2] -> pinhole raster points (the inverse of `distort`
        inside the field of view)."""
        offset = (np.asarray(points, np.float64) - self.centre) / self.focal
        rho = np.linalg.norm(offset, axis=-1, keepdims=True)
        theta = self.angle_of(points)[..., None]
        scale = np.where(rho > 1e-12, np.tan(theta) / np.maximum(rho, 1e-12), 1.0)
        return np.asarray(self.pinhole_centre) + self.pinhole_focal * scale * offset

    def squeeze(self, points: np.ndarray) -> np.ndarray:
        """How many pinhole pixels one picture pixel spans at points [...] (the larger of
        the radial and tangential scale of `undistort`), for anti-aliasing."""
        rho = np.linalg.norm((np.asarray(points, np.float64) - self.centre) / self.focal, axis=-1)
        theta = self.angle_of(points)
        theta2 = theta * theta
        slope = 1 + 3 * self.k1 * theta2 + 5 * self.k2 * theta2 * theta2
        radial = self.pinhole_focal / (self.focal * np.cos(theta) ** 2 * slope)
        tangential = np.where(rho > 1e-9, self.pinhole_focal * np.tan(theta) / (self.focal * np.maximum(rho, 1e-9)),
                              self.pinhole_focal / self.focal)
        return np.maximum(radial, tangential)

    def in_view(self, points: np.ndarray) -> np.ndarray:
        """bool [...]: picture points inside the image circle."""
        return np.linalg.norm(np.asarray(points, np.float64) - self.centre, axis=-1) <= self.radius


@dataclass(frozen=True)
class WideAngleConfig:
    """Everything that shapes a wide-angle clip. Ranges are inclusive; per clip a value is
    drawn from each."""

    frames: int = 24
    height: int = 240
    width: int = 320
    num_points: int = 256
    object_point_fraction: float = 0.5
    # False: the same scenes through a pinhole camera of the pinhole focal length, centred
    # (no distortion, image circle or vignetting): what the lens costs.
    lens: bool = True
    # Half the field of view at the image circle, and the circle's radius as a fraction
    # of half the image diagonal (below 1: dark corners).
    half_fov_degrees: Tuple[float, float] = (60.0, 72.0)
    circle: Tuple[float, float] = (0.86, 0.96)
    k1: Tuple[float, float] = (-0.03, 0.03)
    # The pinhole render's focal length relative to the lens': below 1 renders fewer
    # pixels and softens the centre a little.
    pinhole_scale: float = 0.9
    vignetting: Tuple[float, float] = (0.15, 0.35)       # brightness lost at the image circle
    # The scene: Kubric-lite's, with objects sized as a fraction of min(height, width) of
    # the picture (the pinhole render is larger), more of them, and a faster camera
    # (fractions of the pinhole render's size and degrees over the clip).
    num_objects: Tuple[int, int] = (6, 14)
    object_size: Tuple[float, float] = (0.15, 0.45)
    camera_shift: float = 0.5
    camera_rotation: float = 40.0
    camera_zoom: float = 0.4
    canvas_scale: float = 2.0

    def __post_init__(self):
        _check_ranges(self, ("half_fov_degrees", "circle", "k1", "vignetting", "num_objects", "object_size"))
        if not (20 <= self.half_fov_degrees[0] and self.half_fov_degrees[1] <= 80):
            raise ValueError(f"half_fov_degrees must lie in [20, 80], got {self.half_fov_degrees}")
        if not 0 < self.circle[0]:
            raise ValueError(f"circle must be positive, got {self.circle}")
        if not (abs(self.k1[0]) <= 0.1 and abs(self.k1[1]) <= 0.1):
            raise ValueError(f"k1 must lie in [-0.1, 0.1] (a monotonic lens), got {self.k1}")
        if not 0.5 <= self.pinhole_scale <= 1.5:
            raise ValueError(f"pinhole_scale must lie in [0.5, 1.5], got {self.pinhole_scale}")

    def replace(self, **changes) -> "WideAngleConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class WideAngleClip(Clip):
    """A wide-angle clip: `Clip`'s fields describe the picture (tracks, occlusion and layer
    ids as seen through the lens); the scene is rendered in the pinhole image."""

    lens: FisheyeLens
    pinhole_tracks: np.ndarray      # float32 [N, T, 2], the tracks in the pinhole render
    pinhole_size: Tuple[int, int]   # (height, width) of the pinhole render


def sample_lens(rng: np.random.Generator, config: WideAngleConfig) -> Tuple[FisheyeLens, Tuple[int, int]]:
    """A lens for the picture size of `config`, and the (height, width) of the pinhole render
    that holds its whole field of view (the picture size plus even margins, so that the
    pinhole centre is the picture centre moved by whole pixels)."""
    height, width = config.height, config.width
    half_fov = np.radians(rng.uniform(*config.half_fov_degrees))
    radius = float(rng.uniform(*config.circle) * np.hypot(width, height) / 2)
    k1 = float(rng.uniform(*config.k1))
    focal = float(radius / (half_fov * (1 + k1 * half_fov ** 2)))
    pinhole_focal = config.pinhole_scale * focal
    centre = (width / 2, height / 2)
    probe = FisheyeLens(focal, k1, 0.0, centre, radius, pinhole_focal, centre)
    # The pinhole extent of every picture pixel inside the circle (corners and edges decide).
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    pixels = np.stack([xs, ys], -1)[probe.in_view(np.stack([xs, ys], -1))]
    reach = np.abs(probe.undistort(pixels) - centre).max(0)
    margin = np.maximum(np.ceil(reach - np.array([width / 2, height / 2])) + 2, 0).astype(int)
    size = (height + 2 * int(margin[1]), width + 2 * int(margin[0]))
    lens = FisheyeLens(focal, k1, 0.0, centre, radius, pinhole_focal, (size[1] / 2, size[0] / 2))
    return lens, size


def _pyramid_weights(squeeze: np.ndarray, levels: int) -> np.ndarray:
    """Per-pixel weights [levels, H, W] of the pyramid levels (trilinear mip-mapping: the
    level whose pixel matches the footprint, blended linearly in log2 between neighbours)."""
    level = np.clip(np.log2(np.maximum(squeeze, 1.0)), 0, levels - 1)
    low = np.floor(level).astype(int)
    fraction = (level - low).astype(np.float32)
    weights = np.zeros((levels,) + squeeze.shape, np.float32)
    rows, cols = np.indices(squeeze.shape)
    weights[low, rows, cols] = 1 - fraction
    high = np.minimum(low + 1, levels - 1)
    weights[high, rows, cols] += fraction
    return weights


class LensView:
    """The picture through `lens` of frames rendered in the pinhole image: the resampling
    maps, pyramid weights, image circle and vignetting, computed once per clip."""

    LEVELS = 4

    def __init__(self, lens: FisheyeLens, height: int, width: int, vignetting: float):
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        centres = np.stack([xs, ys], -1)
        self.inside = lens.in_view(centres)
        source = lens.undistort(centres)
        source[~self.inside] = lens.pinhole_centre  # outside the circle: anything harmless
        self.source = source
        self.weights = _pyramid_weights(lens.squeeze(centres), self.LEVELS)
        distance = np.linalg.norm(centres - lens.centre, axis=-1)
        edge = np.clip(lens.radius - distance + 0.5, 0, 1)  # a soft, one-pixel circle edge
        self.shade = (edge * (1 - vignetting * (distance / lens.radius) ** 2)).astype(np.float32)[..., None]
        self.used = [level for level in range(self.LEVELS) if self.weights[level][self.inside].any()]
        # OpenCV samples with pixel centres at integers (raster - 0.5), and a pyrDown level's
        # pixel i is pixel 2i of the level below: coordinates halve. Fixed-point maps keep
        # OpenCV's 1/32 pixel sampling and remap faster.
        opencv = (source - 0.5).astype(np.float32)
        self.maps = {level: cv2.convertMaps(opencv[..., 0] / 2 ** level, opencv[..., 1] / 2 ** level,
                                            cv2.CV_16SC2) for level in self.used}

    def picture(self, frame: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] picture of a rendered uint8 pinhole frame."""
        image = frame.astype(np.float32)
        out = np.zeros(self.shade.shape[:2] + (3,), np.float32)
        for level in range(max(self.used) + 1):
            if level:
                image = cv2.pyrDown(image)
            if level in self.used:
                sampled = cv2.remap(image, *self.maps[level], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                out += self.weights[level][..., None] * sampled
        return np.clip(out * self.shade + 0.5, 0, 255).astype(np.uint8)

    def layer_ids(self, pinhole_ids: np.ndarray) -> np.ndarray:
        """uint8 [H, W]: the layer the pinhole id map shows under each picture pixel's
        centre (`OUTSIDE_VIEW` outside the circle)."""
        height, width = pinhole_ids.shape
        column = np.clip(np.floor(self.source[..., 0]), 0, width - 1).astype(np.int64)
        row = np.clip(np.floor(self.source[..., 1]), 0, height - 1).astype(np.int64)
        return np.where(self.inside, pinhole_ids[row, column], OUTSIDE_VIEW).astype(np.uint8)


def generate_wide_angle_clip(seed: int, config: WideAngleConfig = WideAngleConfig()) -> WideAngleClip:
    """One wide-angle clip with exact tracks; the same seed and config give identical arrays,
    and `lens=False` the same scene through a centred pinhole camera."""
    rng = np.random.default_rng(seed)
    lens, (render_h, render_w) = sample_lens(rng, config)
    vignetting = rng.uniform(*config.vignetting)
    size_scale = min(config.height, config.width) / min(render_h, render_w)
    pinhole = SyntheticConfig(
        frames=config.frames, height=render_h, width=render_w, num_points=config.num_points,
        object_point_fraction=config.object_point_fraction, num_objects=config.num_objects,
        object_size=tuple(s * size_scale for s in config.object_size), camera_shift=config.camera_shift,
        camera_rotation=config.camera_rotation, camera_zoom=config.camera_zoom, canvas_scale=config.canvas_scale)
    scene = sample_scene(rng, pinhole)
    rendered, pinhole_ids = render_scene(scene, pinhole)
    if config.lens:
        view = LensView(lens, config.height, config.width, vignetting)
        video = np.stack([view.picture(frame) for frame in rendered])
        layer_ids = np.stack([view.layer_ids(ids) for ids in pinhole_ids])
        to_render, to_picture = lens.undistort, lens.distort
    else:
        top, left = (render_h - config.height) // 2, (render_w - config.width) // 2
        video = np.ascontiguousarray(rendered[:, top:top + config.height, left:left + config.width])
        layer_ids = np.ascontiguousarray(pinhole_ids[:, top:top + config.height, left:left + config.width])
        offset = np.array([left, top], np.float64)
        to_render, to_picture = (lambda points: points + offset), (lambda points: points - offset)
    query_frames, track_layers, surface_points = sample_queries(rng, scene, layer_ids, pinhole,
                                                                image_to_render=to_render)
    pinhole_tracks = track_surface_points(scene, track_layers, surface_points)
    tracks = to_picture(pinhole_tracks.astype(np.float64)).astype(np.float32)
    return WideAngleClip(video=video, tracks=tracks, occluded=occlusion(tracks, track_layers, layer_ids),
                         query_frames=query_frames, track_layers=track_layers, surface_points=surface_points,
                         layer_ids=layer_ids, scene=scene, seed=seed, lens=lens, pinhole_tracks=pinhole_tracks,
                         pinhole_size=(render_h, render_w))


# ----------------------------------------------------------------------------- outputs

@dataclass(frozen=True)
class Domain:
    config: type
    generate: Callable[[int, Any], Clip]
    topic: str
    frame_id: str


DOMAINS: Dict[str, Domain] = {
    "low_light": Domain(LowLightConfig, generate_low_light_clip, "/warehouse_camera/image_raw",
                        "warehouse_camera_optical_frame"),
    "wide_angle": Domain(WideAngleConfig, generate_wide_angle_clip, "/body_camera/image_raw",
                         "body_camera_optical_frame"),
}


def domain_config(name: str, clean: bool = False, **fields):
    """The config of domain `name` with `fields` set; `clean` turns its shift off."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; expected one of {sorted(DOMAINS)}")
    config = DOMAINS[name].config(**fields)
    if clean:
        config = config.replace(**({"photometric": False} if name == "low_light" else {"lens": False}))
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.domains.shifted_domains",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    labeled = commands.add_parser("labeled", help="labeled held-out clips as a TAP-Vid pickle")
    labeled.add_argument("--out", required=True, help="TAP-Vid pickle to write")
    labeled.add_argument("--num-clips", type=int, default=20, help="clips (default 20)")
    labeled.add_argument("--seed", type=int, default=0, help="first clip's seed (below 2**30)")
    labeled.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    labeled.add_argument("--num-points", type=int, default=64, help="tracks per clip (default 64)")
    labeled.add_argument("--clean", action="store_true",
                         help="without the domain's shift: low_light in daylight, wide_angle through a pinhole "
                              "camera (the same scenes, to tell the shift's cost from the rest)")
    bag = commands.add_parser("bag", help="unlabeled episodes as a rosbag2 bag")
    bag.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    bag.add_argument("--episodes", type=int, default=16, help="episodes (default 16)")
    bag.add_argument("--first-episode", type=int, default=0,
                     help="index of the first episode (its seed is 2**30 + index)")
    bag.add_argument("--frames", type=int, default=48, help="frames per episode (default 48)")
    bag.add_argument("--fps", type=float, default=15.0, help="frame rate inside an episode (default 15)")
    bag.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    bag.add_argument("--compressed", action="store_true", help="JPEG sensor_msgs/CompressedImage")
    bag.add_argument("--topic", help="image topic (default: the domain's camera, /<camera>/image_raw; with "
                                     "--compressed, /compressed is appended to .../image_raw)")
    for sub in (labeled, bag):
        sub.add_argument("--domain", required=True, choices=sorted(DOMAINS))
        sub.add_argument("--height", type=int, default=240, help="image height (default 240)")
        sub.add_argument("--width", type=int, default=320, help="image width (default 320)")
    args = parser.parse_args(argv)
    domain = DOMAINS[args.domain]
    started = time.perf_counter()
    if args.command == "labeled":
        config = domain_config(args.domain, args.clean, frames=args.frames, num_points=args.num_points,
                               height=args.height, width=args.width)
        path = write_labeled(args.out, args.seed, args.num_clips, config, generate=domain.generate,
                             prefix=args.domain)
        print(f"wrote {args.num_clips} labeled {args.domain} clips (seeds {args.seed}..{args.seed + args.num_clips - 1})"
              f" to {path} in {time.perf_counter() - started:.1f} s")
    else:
        config = domain_config(args.domain, frames=args.frames, height=args.height, width=args.width)
        summary = write_bag(args.out, args.first_episode, args.episodes, config, args.topic or domain.topic,
                            args.storage, args.compressed, args.fps, generate=domain.generate,
                            frame_id=domain.frame_id)
        print(f"wrote {summary['frames']} frames ({summary['episodes']} {args.domain} episodes) on "
              f"{summary['topic']} to {summary['bag']} ({summary['bytes'] / 1e6:.1f} MB) in "
              f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
