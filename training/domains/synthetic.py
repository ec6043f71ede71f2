"""Kubric-lite: procedural training clips with exact point tracks (numpy + OpenCV only).

A scene is a stack of layers drawn back to front: layer 0 is a textured background
canvas larger than the image, layers 1..K are textured foreground objects with
alpha masks (a higher index is nearer the camera). Each layer ``l`` has, per frame
``t``, a homography ``image_from_layer[l, t]`` from layer (texture) coordinates to
image coordinates; the camera motion is already composed into it. Some objects
also wobble non-rigidly: the surface point shown at layer position ``w`` is

    u = w - a * sin(K @ w + phase[t])        (a, phase: per row of K)

Rendering samples the texture at ``u`` for every pixel. A tracked surface point
``u`` is found in frame ``t`` by solving that equation for ``w`` (a contraction:
``|a_i| * |K_i| <= 1/4`` per row, so fixed-point iteration converges) and mapping
``w`` through ``image_from_layer[l, t]``.

Coordinates follow TAPIR's raster convention everywhere: ``(0, 0)`` is the
top-left corner of the top-left pixel, pixel (column i, row j) covers
``[i, i+1) x [j, j+1)`` and has its centre at ``(i + 0.5, j + 0.5)``. OpenCV's
warps put pixel centres at integers, so matrices are converted by `_to_opencv`
and remap coordinates are shifted by 0.5 on the way in. OpenCV interpolates at
1/32 pixel precision, so rendering matches the tracks to within 1/64 pixel.

Visibility rule: a track is visible in frame ``t`` iff its position ``(x, y)``
lies in ``[0, W) x [0, H)`` and the layer-id map of frame ``t`` at pixel
``(floor(x), floor(y))`` holds the track's own layer. The id map holds, per
pixel, the nearest layer whose alpha at the pixel centre is at least 0.5.
Photometric effects (lighting, per-object brightness, motion blur, noise)
change pixel values only, never geometry or visibility.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .textures import make_faint_texture, make_shape_mask, make_texture

# Fixed-point iterations for the forward wobble; the contraction factor is at most
# sqrt(2) / 4, so 40 iterations leave an error far below float32 resolution.
_WOBBLE_ITERATIONS = 40
# Camera sampling shrinks the motion and retries when the view leaves the canvas.
_CAMERA_TRIES = 8


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes a synthetic clip. Ranges are inclusive."""

    frames: int = 24
    height: int = 256
    width: int = 256
    num_points: int = 256
    # Share of query points placed on objects (the rest on the background); a frame
    # without visible objects puts all its points on the background, and vice versa.
    object_point_fraction: float = 0.5
    num_objects: Tuple[int, int] = (3, 8)
    # Object diameter as a fraction of min(height, width).
    object_size: Tuple[float, float] = (0.15, 0.45)
    # Object motion: maximum speed (pixels per frame), rotation speed (degrees per
    # frame) and |log| scale change over the clip.
    object_speed: float = 4.0
    object_rotation: float = 3.0
    object_scaling: float = 0.3
    # Share of objects that wobble, and the wobble amplitude as a fraction of the
    # object diameter (capped further so that the wobble stays invertible).
    deform_probability: float = 0.4
    deform_amplitude: float = 0.05
    # Camera: maximum change over the clip of translation (fraction of the image
    # size), rotation (degrees) and |log| zoom; perspective tilt up to +-this
    # (relative foreshortening at the image border).
    camera_shift: float = 0.15
    camera_rotation: float = 10.0
    camera_zoom: float = 0.2
    camera_perspective: float = 0.15
    # Background canvas size relative to the image; the camera never sees past it.
    canvas_scale: float = 2.0
    # Photometry. Global gain in [1 - g, 1 + g] and bias in [-b, b] (fraction of full
    # scale), both drifting over the clip; per-object gain in [1 - o, 1 + o]; motion
    # blur probability per frame; maximum Gaussian noise std (fraction of full scale).
    lighting_gain: float = 0.25
    lighting_bias: float = 0.08
    object_brightness: float = 0.2
    motion_blur_probability: float = 0.1
    noise_std: float = 0.02
    # Share of clips whose background is a weak, fine texture (textures.make_faint_texture)
    # instead of a bold one; 0 leaves every clip as before (no random draw is spent on it).
    faint_background: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "num_objects", tuple(int(v) for v in self.num_objects))
        object.__setattr__(self, "object_size", tuple(float(v) for v in self.object_size))
        if self.frames < 1 or self.height < 8 or self.width < 8 or self.num_points < 0:
            raise ValueError(f"need frames >= 1, height and width >= 8 and num_points >= 0; got "
                             f"frames={self.frames}, size={self.height}x{self.width}, "
                             f"num_points={self.num_points}")
        low, high = self.num_objects
        if not 0 <= low <= high <= 254:
            raise ValueError(f"num_objects must be a range 0 <= low <= high <= 254, got {self.num_objects}")
        low, high = self.object_size
        if not 0 < low <= high:
            raise ValueError(f"object_size must be a range 0 < low <= high, got {self.object_size}")
        if not 0 <= self.camera_perspective < 0.5:
            raise ValueError(f"camera_perspective must lie in [0, 0.5), got {self.camera_perspective}")
        if self.canvas_scale < 1.2:
            raise ValueError(f"canvas_scale must be at least 1.2, got {self.canvas_scale}")
        if not 0 <= self.object_point_fraction <= 1:
            raise ValueError(f"object_point_fraction must lie in [0, 1], got {self.object_point_fraction}")
        if not 0 <= self.faint_background <= 1:
            raise ValueError(f"faint_background must lie in [0, 1], got {self.faint_background}")

    def replace(self, **changes) -> "SyntheticConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class Scene:
    """The geometry and appearance behind a clip; L = 1 + number of objects."""

    textures: List[np.ndarray]      # per layer float32 [h, w, 4] RGBA in [0, 1]; 0 = background
    image_from_layer: np.ndarray    # float64 [L, T, 3, 3], layer raster -> image raster coords
    wobble_amplitude: np.ndarray    # float64 [L, 2] (zero for rigid layers)
    wobble_vector: np.ndarray       # float64 [L, 2, 2], row i is the wave vector of component i
    wobble_phase: np.ndarray        # float64 [L, T, 2]
    layer_gain: np.ndarray          # float32 [L, T] per-layer brightness
    light_gain: np.ndarray          # float32 [T]
    light_bias: np.ndarray          # float32 [T]
    blur_length: np.ndarray         # int32 [T], motion blur kernel length (0: none)
    blur_angle: np.ndarray          # float32 [T], degrees
    noise_std: float
    noise_seed: int

    @property
    def num_layers(self) -> int:
        return len(self.textures)


@dataclass
class Clip:
    """A rendered clip with exact ground truth. Positions are (x, y) raster pixels."""

    video: np.ndarray               # uint8 [T, H, W, 3] RGB
    tracks: np.ndarray              # float32 [N, T, 2]
    occluded: np.ndarray            # bool [N, T]
    query_frames: np.ndarray        # int32 [N], frame each point was sampled in (visible there)
    track_layers: np.ndarray        # int32 [N], layer of each point (0 = background)
    surface_points: np.ndarray      # float64 [N, 2], each point in its layer's texture coords
    layer_ids: np.ndarray           # uint8 [T, H, W], visible layer per pixel
    scene: Scene
    seed: int

    @property
    def query_points(self) -> np.ndarray:
        """float32 [N, 3] queries ``(t, x, y)``, the project's query convention."""
        xy = self.tracks[np.arange(len(self.query_frames)), self.query_frames]
        return np.concatenate([self.query_frames[:, None].astype(np.float32), xy], axis=1)


def generate_clip(seed: int, config: SyntheticConfig = SyntheticConfig()) -> Clip:
    """Generates one clip; the same seed and config always give identical arrays."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, config)
    video, layer_ids = render_scene(scene, config)
    query_frames, track_layers, surface_points = sample_queries(rng, scene, layer_ids, config)
    tracks = track_surface_points(scene, track_layers, surface_points)
    return Clip(video=video, tracks=tracks, occluded=occlusion(tracks, track_layers, layer_ids),
                query_frames=query_frames, track_layers=track_layers,
                surface_points=surface_points, layer_ids=layer_ids, scene=scene, seed=seed)


# ----------------------------------------------------------------------------- geometry

def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _rotation_scale(angle: float, scale: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps points [..., 2] through homographies [..., 3, 3] (broadcast)."""
    x, y = points[..., 0], points[..., 1]
    m = matrix
    scale = m[..., 2, 0] * x + m[..., 2, 1] * y + m[..., 2, 2]
    return np.stack([(m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2]) / scale,
                     (m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]) / scale], axis=-1)


def _to_opencv(raster_matrix: np.ndarray) -> np.ndarray:
    """A homography between raster coordinates, re-expressed between OpenCV's
    pixel-centre-at-integer coordinates (which are raster coordinates minus 0.5)."""
    return _translation(-0.5, -0.5) @ raster_matrix @ _translation(0.5, 0.5)


def _curve(rng: np.random.Generator, magnitude, frames: int, width: int) -> np.ndarray:
    """A smooth random path over the clip, float64 [frames, width]: a quadratic Bezier
    curve through random start, control and end values in [-magnitude/2, magnitude/2]."""
    start, control, end = rng.uniform(-0.5, 0.5, (3, width)) * magnitude
    tau = np.linspace(0.0, 1.0, frames)[:, None]
    return (1 - tau) ** 2 * start + 2 * tau * (1 - tau) * control + tau ** 2 * end


def wobble(points: np.ndarray, amplitude: np.ndarray, vector: np.ndarray,
           phase: np.ndarray) -> np.ndarray:
    """The wobble displacement ``a * sin(K @ w + phase)`` at points w [..., 2] (broadcast)."""
    x, y = points[..., 0], points[..., 1]
    k = vector
    return amplitude * np.sin(np.stack([k[..., 0, 0] * x + k[..., 0, 1] * y,
                                        k[..., 1, 0] * x + k[..., 1, 1] * y], axis=-1) + phase)


def camera_inside_canvas(make_cameras, size: Tuple[int, int], canvas_size: Tuple[int, int],
                         frames: int) -> np.ndarray:
    """`make_cameras(motion)` (image_from_canvas homographies [T, 3, 3]) at motion 1, then
    halved on each of `_CAMERA_TRIES` tries until the view of an image of `size` stays
    inside the canvas; a camera fixed at the canvas centre if none does."""
    height, width = size
    canvas_h, canvas_w = canvas_size
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
    motion = 1.0
    for _ in range(_CAMERA_TRIES):
        cameras = make_cameras(motion)
        seen = apply_homography(np.linalg.inv(cameras)[:, None], corners)
        # Half a pixel of margin keeps bilinear sampling off the canvas border.
        if (seen.min() >= 0.5 and (seen[..., 0] <= canvas_w - 0.5).all()
                and (seen[..., 1] <= canvas_h - 0.5).all()):
            return cameras
        motion *= 0.5
    # Degenerate but safe: a camera that stays centred on the canvas.
    return np.repeat(_translation(width / 2 - canvas_w / 2, height / 2 - canvas_h / 2)[None], frames, 0)


def _sample_camera(rng: np.random.Generator, config: SyntheticConfig,
                   canvas_size: Tuple[int, int]) -> np.ndarray:
    """Per-frame image_from_canvas homographies [T, 3, 3] that keep the view inside the canvas."""
    height, width, frames = config.height, config.width, config.frames
    canvas_h, canvas_w = canvas_size

    def make_cameras(motion: float) -> np.ndarray:
        shift = _curve(rng, motion * config.camera_shift * np.array([width, height]), frames, 2)
        angle = _curve(rng, motion * np.radians(config.camera_rotation), frames, 1)[:, 0]
        zoom = np.exp(_curve(rng, motion * config.camera_zoom, frames, 1)[:, 0])
        tilt = _curve(rng, motion * 2 * config.camera_perspective, frames, 2)
        cameras = np.empty((frames, 3, 3))
        for t in range(frames):
            # Perspective in image coordinates centred on the image, normalised by the half size.
            perspective = np.eye(3)
            perspective[2, :2] = tilt[t] / (np.array([width, height]) / 2)
            cameras[t] = (_translation(width / 2, height / 2) @ perspective
                          @ _rotation_scale(angle[t], zoom[t])
                          @ _translation(-canvas_w / 2 - shift[t, 0], -canvas_h / 2 - shift[t, 1]))
        return cameras

    return camera_inside_canvas(make_cameras, (height, width), canvas_size, frames)


def sample_scene(rng: np.random.Generator, config: SyntheticConfig) -> Scene:
    """Draws textures, shapes, camera and object motion, and photometric changes."""
    height, width, frames = config.height, config.width, config.frames
    canvas_h = int(np.ceil(config.canvas_scale * height))
    canvas_w = int(np.ceil(config.canvas_scale * width))
    faint = config.faint_background > 0 and rng.random() < config.faint_background
    canvas = (make_faint_texture if faint else make_texture)(rng, canvas_h, canvas_w)
    textures = [np.concatenate([canvas, np.ones((canvas_h, canvas_w, 1), np.float32)], axis=-1)]
    cameras = _sample_camera(rng, config, (canvas_h, canvas_w))
    num_objects = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    layers = 1 + num_objects

    image_from_layer = np.empty((layers, frames, 3, 3))
    image_from_layer[0] = cameras
    amplitude = np.zeros((layers, 2))
    vector = np.zeros((layers, 2, 2))
    phase = np.zeros((layers, frames, 2))
    layer_gain = np.ones((layers, frames), np.float32)
    times = np.arange(frames, dtype=np.float64)
    for layer in range(1, layers):
        diameter = rng.uniform(*config.object_size) * min(height, width)
        if rng.random() < config.deform_probability:
            wavelength = rng.uniform(0.5, 1.5, 2) * diameter
            direction = rng.uniform(0, 2 * np.pi, 2)
            vector[layer] = (2 * np.pi / wavelength)[:, None] * np.stack(
                [np.cos(direction), np.sin(direction)], axis=-1)
            cap = np.minimum(config.deform_amplitude * diameter, 0.25 * wavelength / (2 * np.pi))
            amplitude[layer] = rng.uniform(0.3, 1.0, 2) * cap
            phase[layer] = rng.uniform(0, 2 * np.pi, 2) + rng.uniform(-0.4, 0.4, 2) * times[:, None]
        margin = int(np.ceil(amplitude[layer].max())) + 2
        size = int(np.ceil(diameter)) + 2 * margin
        texture = make_texture(rng, size, size)
        alpha = make_shape_mask(rng, size, diameter / 2)
        textures.append(np.concatenate([texture, alpha[..., None]], axis=-1))

        # Motion in canvas coordinates: the object is inside the image at an anchor
        # frame and moves along a gently curved path, so some enter or leave the view.
        anchor = int(rng.integers(frames))
        at_anchor = rng.uniform([0, 0], [width, height])
        centre = apply_homography(np.linalg.inv(cameras[anchor]), at_anchor)
        heading = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0, config.object_speed) * np.array([np.cos(heading), np.sin(heading)])
        acceleration = rng.uniform(-1, 1, 2) * config.object_speed / frames
        dt = (times - anchor)[:, None]
        path = centre + velocity * dt + 0.5 * acceleration * dt ** 2
        angle = rng.uniform(0, 2 * np.pi) + np.radians(rng.uniform(-1, 1) * config.object_rotation) * times
        scale = np.exp(rng.uniform(-1, 1) * config.object_scaling * (times / max(frames - 1, 1) - 0.5))
        for t in range(frames):
            canvas_from_layer = (_translation(*path[t]) @ _rotation_scale(angle[t], scale[t])
                                 @ _translation(-size / 2, -size / 2))
            image_from_layer[layer, t] = cameras[t] @ canvas_from_layer
        start, end = rng.uniform(1 - config.object_brightness, 1 + config.object_brightness, 2)
        layer_gain[layer] = np.linspace(start, end, frames)

    blurred = rng.random(frames) < config.motion_blur_probability
    return Scene(
        textures=textures, image_from_layer=image_from_layer, wobble_amplitude=amplitude,
        wobble_vector=vector, wobble_phase=phase, layer_gain=layer_gain,
        light_gain=(1 + _curve(rng, 2 * config.lighting_gain, frames, 1)[:, 0]).astype(np.float32),
        light_bias=_curve(rng, 2 * config.lighting_bias, frames, 1)[:, 0].astype(np.float32),
        blur_length=np.where(blurred, rng.integers(3, 10, frames), 0).astype(np.int32),
        blur_angle=rng.uniform(0, 180, frames).astype(np.float32),
        noise_std=float(rng.uniform(0, config.noise_std)),
        noise_seed=int(rng.integers(2 ** 63)))


# ----------------------------------------------------------------------------- rendering

def _layer_box(scene: Scene, layer: int, t: int, height: int, width: int):
    """Image pixel box (x0, y0, x1, y1) that can show `layer` in frame `t`, or None."""
    if layer == 0:
        return 0, 0, width, height
    texture_h, texture_w = scene.textures[layer].shape[:2]
    reach = scene.wobble_amplitude[layer].max() + 1
    corners = np.array([[-reach, -reach], [texture_w + reach, -reach],
                        [-reach, texture_h + reach], [texture_w + reach, texture_h + reach]])
    seen = apply_homography(scene.image_from_layer[layer, t], corners)
    x0, y0 = np.clip(np.floor(seen.min(0)) - 1, 0, [width, height]).astype(int)
    x1, y1 = np.clip(np.ceil(seen.max(0)) + 1, 0, [width, height]).astype(int)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _warp_layer(scene: Scene, layer: int, t: int, box) -> np.ndarray:
    """The layer's RGBA texture as seen by the image pixels of `box`; float32 [h, w, 4]."""
    x0, y0, x1, y1 = box
    texture = scene.textures[layer]
    layer_from_image = np.linalg.inv(scene.image_from_layer[layer, t])
    border = cv2.BORDER_REPLICATE if layer == 0 else cv2.BORDER_CONSTANT
    if not scene.wobble_amplitude[layer].any():
        # Box pixel (i, j) in OpenCV coordinates is image raster point (x0 + i + 0.5, y0 + j + 0.5).
        matrix = _to_opencv(layer_from_image @ _translation(x0, y0))
        return cv2.warpPerspective(texture, matrix, (x1 - x0, y1 - y0),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=border, borderValue=0)
    # float32 keeps 1e-4 pixel precision here, well below OpenCV's 1/32 pixel sampling.
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + np.float32(0.5)
    where = apply_homography(layer_from_image.astype(np.float32), np.stack([xs, ys], axis=-1))
    surface = where - wobble(where, *(np.asarray(v, np.float32) for v in (
        scene.wobble_amplitude[layer], scene.wobble_vector[layer], scene.wobble_phase[layer, t])))
    surface -= np.float32(0.5)  # raster -> OpenCV sampling coordinates
    return cv2.remap(texture, surface[..., 0], surface[..., 1], cv2.INTER_LINEAR,
                     borderMode=border, borderValue=0)


def _motion_blur(frame: np.ndarray, length: int, angle: float) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    centre = (length - 1) / 2
    dx, dy = centre * np.cos(np.radians(angle)), centre * np.sin(np.radians(angle))
    cv2.line(kernel, (int(round(centre - dx)), int(round(centre - dy))),
             (int(round(centre + dx)), int(round(centre + dy))), 1.0, 1)
    return cv2.filter2D(frame, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _gaussian_noise(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Nearly Gaussian noise (a sum of four uniform bytes), five times cheaper than
    `standard_normal` and the largest single cost of rendering otherwise."""
    count = int(np.prod(shape))
    total = np.frombuffer(rng.bytes(4 * count), np.int8).reshape(4, count).sum(0, dtype=np.int16)
    byte_sum_std = np.sqrt(4 * (256 ** 2 - 1) / 12)
    return total.reshape(shape).astype(np.float32) * np.float32(std / byte_sum_std)


def render_scene(scene: Scene, config: SyntheticConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Renders the video, uint8 [T, H, W, 3], and the layer-id map, uint8 [T, H, W]."""
    height, width, frames = config.height, config.width, config.frames
    video = np.empty((frames, height, width, 3), np.uint8)
    layer_ids = np.zeros((frames, height, width), np.uint8)
    noise_rng = np.random.default_rng(scene.noise_seed)
    for t in range(frames):
        frame = np.zeros((height, width, 3), np.float32)
        for layer in range(scene.num_layers):
            box = _layer_box(scene, layer, t, height, width)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            rgba = _warp_layer(scene, layer, t, box)
            colour = rgba[..., :3] * scene.layer_gain[layer, t]
            if layer == 0:
                frame[:] = colour  # the background canvas is opaque and covers the view
                continue
            alpha = rgba[..., 3:]
            region = frame[y0:y1, x0:x1]
            region += alpha * (colour - region)
            layer_ids[t, y0:y1, x0:x1][alpha[..., 0] >= 0.5] = layer
        frame = frame * scene.light_gain[t] + scene.light_bias[t]
        if scene.blur_length[t]:
            frame = _motion_blur(frame, int(scene.blur_length[t]), float(scene.blur_angle[t]))
        if scene.noise_std > 0:
            frame += _gaussian_noise(noise_rng, frame.shape, scene.noise_std)
        video[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return video, layer_ids


# ----------------------------------------------------------------------------- tracks

def sample_queries(rng: np.random.Generator, scene: Scene, layer_ids: np.ndarray,
                   config: SyntheticConfig, image_to_render=None):
    """Samples query points on visible surfaces at random frames.

    Each point is drawn uniformly inside a random pixel showing its surface (objects for
    a share `object_point_fraction`, else background), so it is visible in its query frame.
    Returns query_frames int32 [N], track_layers int32 [N] and surface_points float64 [N, 2].

    `layer_ids` [T, H, W] may be the id map of another view of the rendered frames (the
    picture behind a lens): `image_to_render` then maps its raster points [N, 2] to the
    rendered image's, and ids that name no layer (at least `scene.num_layers`: nothing
    seen there) are never sampled.
    """
    count, frames, width = config.num_points, config.frames, layer_ids.shape[2]
    query_frames = np.sort(rng.integers(0, frames, count)).astype(np.int32)
    on_object = rng.random(count) < config.object_point_fraction
    pixels = np.empty(count, np.int64)
    for t in np.unique(query_frames):
        ids = layer_ids[t].ravel()
        pools = {True: np.flatnonzero((ids > 0) & (ids < scene.num_layers)), False: np.flatnonzero(ids == 0)}
        for wants_object in (True, False):
            chosen = np.flatnonzero((query_frames == t) & (on_object == wants_object))
            pool = pools[wants_object] if len(pools[wants_object]) else pools[not wants_object]
            pixels[chosen] = pool[rng.integers(0, len(pool), len(chosen))]
    # Stay clear of pixel edges so that float32 rounding cannot move a query to a neighbour.
    jitter = rng.uniform(0.05, 0.95, (count, 2))
    image_points = np.stack([pixels % width, pixels // width], axis=-1) + jitter
    track_layers = layer_ids[query_frames, pixels // width, pixels % width].astype(np.int32)
    if image_to_render is not None:
        image_points = image_to_render(image_points)

    layer_from_image = np.linalg.inv(scene.image_from_layer[track_layers, query_frames])
    where = apply_homography(layer_from_image, image_points)
    surface_points = where - wobble(where, scene.wobble_amplitude[track_layers],
                                    scene.wobble_vector[track_layers],
                                    scene.wobble_phase[track_layers, query_frames])
    return query_frames, track_layers, surface_points


def track_surface_points(scene: Scene, track_layers: np.ndarray,
                         surface_points: np.ndarray) -> np.ndarray:
    """Exact image positions of surface points in every frame; float32 [N, T, 2]."""
    amplitude = scene.wobble_amplitude[track_layers][:, None]   # [N, 1, 2]
    vector = scene.wobble_vector[track_layers][:, None]         # [N, 1, 2, 2]
    phase = scene.wobble_phase[track_layers]                    # [N, T, 2]
    start = surface_points[:, None]                             # [N, 1, 2]
    # Invert u = w - wobble(w) by iterating w <- u + wobble(w), a contraction.
    where = np.broadcast_to(start, phase.shape).copy()
    for _ in range(_WOBBLE_ITERATIONS):
        where = start + wobble(where, amplitude, vector, phase)
    return apply_homography(scene.image_from_layer[track_layers], where).astype(np.float32)


def occlusion(tracks: np.ndarray, track_layers: np.ndarray, layer_ids: np.ndarray) -> np.ndarray:
    """The visibility rule of this module, inverted: bool [N, T], True = occluded."""
    frames, height, width = layer_ids.shape
    x, y = tracks[..., 0].astype(np.float64), tracks[..., 1].astype(np.float64)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    column = np.clip(np.floor(np.nan_to_num(x)), 0, width - 1).astype(np.int64)
    row = np.clip(np.floor(np.nan_to_num(y)), 0, height - 1).astype(np.int64)
    shown = layer_ids[np.arange(frames)[None], row, column]
    return ~(inside & (shown == track_layers[:, None]))


# ----------------------------------------------------------------------------- output

def write_tapvid_pickle(path, clips: Iterable[Clip], names: Optional[Sequence[str]] = None) -> None:
    """Writes clips as a TAP-Vid DAVIS-style pickle: a dict from video name to
    ``{"video": uint8 [T,H,W,3], "points": float32 [N,T,2] (x, y in [0, 1]),
    "occluded": bool [N,T]}``. Names default to ``synthetic_<seed>``.

    `clips` may be a generator: only the three arrays of each clip are kept.
    """
    dataset = {}
    count = 0
    for count, clip in enumerate(clips, start=1):
        if names is None:
            name = f"synthetic_{clip.seed}"
        elif count <= len(names):
            name = names[count - 1]
        else:
            raise ValueError(f"more clips than the {len(names)} names given")
        if name in dataset:
            raise ValueError(f"video names must be unique, {name!r} repeats; "
                             "pass names= when clips share a seed")
        height, width = clip.video.shape[1:3]
        dataset[name] = {
            "video": clip.video,
            "points": (clip.tracks / np.array([width, height], np.float32)).astype(np.float32),
            "occluded": clip.occluded.astype(bool),
        }
    if names is not None and count != len(names):
        raise ValueError(f"got {count} clips but {len(names)} names")
    with open(path, "wb") as file:
        pickle.dump(dataset, file, protocol=pickle.HIGHEST_PROTOCOL)


def main(args=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bootstap_ros_training.domains.synthetic",
        description="Generate synthetic clips with exact tracks as a TAP-Vid DAVIS-style pickle.")
    parser.add_argument("--num-clips", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i")
    parser.add_argument("--out", type=Path, required=True, help="output .pkl path")
    parser.add_argument("--frames", type=int, default=SyntheticConfig.frames)
    parser.add_argument("--size", type=int, default=SyntheticConfig.height, help="height and width")
    parser.add_argument("--num-points", type=int, default=SyntheticConfig.num_points)
    options = parser.parse_args(args)
    config = SyntheticConfig(frames=options.frames, height=options.size, width=options.size,
                             num_points=options.num_points)
    started = time.perf_counter()
    clips = (generate_clip(options.seed + i, config) for i in range(options.num_clips))
    write_tapvid_pickle(options.out, clips)
    elapsed = time.perf_counter() - started
    print(f"wrote {options.num_clips} clips ({config.frames} frames, {config.height}x{config.width}, "
          f"{config.num_points} points) to {options.out} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
