"""A shifted domain for the bootstrapping experiment: tabletop clips seen from a wrist camera.

The embedded model was trained on Kubric-lite (`training/domains/synthetic.py`): colourful
procedural textures, a gently moving camera, neutral lighting. A robot team's cameras
see something else. These clips keep Kubric-lite's exact geometry (its layered
`Scene`, renderer, query sampling, tracking and visibility rule are imported, not
copied) and change what the scene looks like and how the camera moves:

- a table top (wood grain, tiles, a cutting mat or cloth weave) instead of random noise;
- tabletop objects with flat, shaded colours and printed labels, mostly at rest on the
  table, some pushed slowly across it;
- a robot arm (a long grey link with a two-finger gripper) entering the view from an
  image edge, reaching in and pulling back: the nearest layer, hiding what lies beneath;
- a wrist camera: the view approaches the table (zoom), turns and translates more than
  Kubric-lite's camera, with a little high-frequency shake;
- the look of a cheap sensor: colour cast and white-balance drift, auto-exposure
  flicker, gamma, vignetting, lens softness, motion blur along the camera's motion and
  signal-dependent noise.

Every photometric effect is a pixel-wise map or a blur with a kernel centred on the
pixel, so it changes colours, never geometry: the tracks and occlusion flags are as
exact as Kubric-lite's (TAPIR raster, pixel centres at +0.5; a point is visible iff
inside the image and its own layer shows at its pixel).

Two outputs, with disjoint seeds (`LABELED_SEEDS` below `UNLABELED_SEED_OFFSET`, the
unlabeled episodes from it up):

    python -m bootstap_ros_training.domains.robot_domain labeled --num-clips 20 --seed 0 --out robot_heldout.pkl
    python -m bootstap_ros_training.domains.robot_domain bag --episodes 24 --out robot_logs_mcap

`labeled` writes the TAP-Vid pickle that `bootstap-eval` reads; `bag` writes the
unlabeled episodes as one continuous rosbag2 image stream with time gaps between
episodes, the way a robot's recordings arrive (`bootstap_ros_training.logs.write_image_bag`; MCAP
raw `sensor_msgs/Image`, or `--storage sqlite3 --compressed` for JPEG
`CompressedImage`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .synthetic import (Clip, Scene, SyntheticConfig, _curve, _rotation_scale, _translation, apply_homography,
                        camera_inside_canvas, occlusion, render_scene, sample_queries, track_surface_points,
                        write_tapvid_pickle)
from .textures import fractal_noise, make_shape_mask, make_texture, smooth_noise

# Labeled (held-out) clips use seeds below this, unlabeled episodes seeds from it up,
# so no labeled clip can ever be part of the unlabeled training data.
UNLABELED_SEED_OFFSET = 1 << 30
TABLE_KINDS = ("wood", "tiles", "mat", "cloth")


@dataclass(frozen=True)
class RobotConfig:
    """Everything that shapes a robot-domain clip. Ranges are inclusive."""

    frames: int = 24
    height: int = 240
    width: int = 320
    num_points: int = 256
    object_point_fraction: float = 0.5
    num_objects: Tuple[int, int] = (2, 6)
    # Object diameter as a fraction of min(height, width).
    object_size: Tuple[float, float] = (0.15, 0.35)
    # Share of objects that are pushed, and their top speed (pixels per frame).
    moving_object_probability: float = 0.3
    object_speed: float = 2.5
    # The arm: probability that it appears, its width as a fraction of min(height, width).
    arm_probability: float = 0.8
    arm_width: Tuple[float, float] = (0.18, 0.3)
    # Wrist camera: change over the clip of translation (fraction of the image size),
    # rotation (degrees) and log zoom (the approach; always towards the table), and the
    # shake's amplitude in pixels.
    camera_shift: float = 0.3
    camera_rotation: float = 30.0
    camera_approach: Tuple[float, float] = (0.1, 0.5)
    camera_shake: float = 1.0
    canvas_scale: float = 2.2
    # Photometric effects; `photometric=False` turns every one off (clean rendering).
    photometric: bool = True
    colour_cast: float = 0.25        # per-channel white-balance gain spread
    exposure_flicker: float = 0.08   # frame-to-frame auto-exposure gain change
    gamma: Tuple[float, float] = (0.75, 1.35)
    vignetting: Tuple[float, float] = (0.15, 0.45)  # brightness lost at the image corners
    lens_blur: Tuple[float, float] = (0.5, 1.1)     # Gaussian sigma, pixels
    exposure_time: Tuple[float, float] = (0.3, 0.8) # fraction of the frame interval (motion blur)
    read_noise: Tuple[float, float] = (0.008, 0.025)
    shot_noise: Tuple[float, float] = (0.0005, 0.004)

    def __post_init__(self):
        for name in ("num_objects", "object_size", "arm_width", "camera_approach", "gamma", "vignetting",
                     "lens_blur", "exposure_time", "read_noise", "shot_noise"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be a range (low, high) with low <= high, got {(low, high)}")
        if self.frames < 1 or self.height < 32 or self.width < 32 or self.num_points < 0:
            raise ValueError(f"need frames >= 1, height and width >= 32 and num_points >= 0; got "
                             f"frames={self.frames}, size={self.height}x{self.width}, "
                             f"num_points={self.num_points}")
        if not 0 <= self.num_objects[0] <= self.num_objects[1] <= 250:
            raise ValueError(f"num_objects must lie in [0, 250], got {self.num_objects}")
        if self.canvas_scale < 1.5:
            raise ValueError(f"canvas_scale must be at least 1.5, got {self.canvas_scale}")

    def replace(self, **changes) -> "RobotConfig":
        return dataclasses.replace(self, **changes)

    def synthetic(self) -> SyntheticConfig:
        """The Kubric-lite config whose renderer and query sampler these clips use."""
        return SyntheticConfig(frames=self.frames, height=self.height, width=self.width,
                               num_points=self.num_points, object_point_fraction=self.object_point_fraction)


# ----------------------------------------------------------------------------- appearance

def _ramp(values: np.ndarray, low, high) -> np.ndarray:
    """Maps values in [0, 1] linearly between two RGB colours; float32 [..., 3]."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return low + values[..., None].astype(np.float32) * (high - low)


def table_texture(rng: np.random.Generator, height: int, width: int, kind: Optional[str] = None) -> np.ndarray:
    """A table top: wood grain, tiles, a cutting mat or a cloth weave. float32 [H, W, 3] in [0, 1]."""
    kind = kind if kind is not None else TABLE_KINDS[rng.integers(len(TABLE_KINDS))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    across = -xs * np.float32(np.sin(angle)) + ys * np.float32(np.cos(angle))
    if kind == "wood":
        # Rings: a sine across the grain, its phase bent by smooth noise; fine streaks along it.
        bend = fractal_noise(rng, height, width, rng.uniform(60, 160), octaves=3) * rng.uniform(20, 60)
        rings = 0.5 + 0.5 * np.sin((across + bend) * np.float32(2 * np.pi / rng.uniform(8, 24)))
        streaks = smooth_noise(rng, height, width, 3.0)[..., 0]
        base = np.array([0.55, 0.36, 0.2]) * rng.uniform(0.6, 1.3)
        image = _ramp(0.6 * rings ** 2 + 0.4 * streaks, base * 0.6, np.clip(base * 1.25, 0, 1))
    elif kind == "tiles":
        period = rng.uniform(24, 64)
        cell_x, cell_y = np.floor(xs / period).astype(np.int64), np.floor(ys / period).astype(np.int64)
        shades = rng.uniform(0.85, 1.15, (int(height / period) + 2, int(width / period) + 2)).astype(np.float32)
        colour = rng.uniform(0.45, 0.9, 3).astype(np.float32)
        image = colour * shades[cell_y, cell_x][..., None]
        grout = (np.minimum(xs % period, ys % period) < rng.uniform(1.5, 3.0))
        image[grout] = colour * 0.45
        image *= (0.9 + 0.2 * fractal_noise(rng, height, width, 40.0, octaves=3))[..., None]
    elif kind == "mat":
        # A green or grey cutting mat: a fine and a coarse grid of thin lines.
        colour = np.array([0.15, 0.45, 0.3] if rng.random() < 0.6 else [0.3, 0.3, 0.33], np.float32)
        image = np.broadcast_to(colour, (height, width, 3)).copy()
        fine = rng.uniform(10, 18)
        for step, strength in ((fine, 0.25), (5 * fine, 0.6)):
            line = (np.minimum(along % step, across % step) < 1.2)
            image[line] += strength * (0.9 - image[line])
        image *= (0.92 + 0.16 * fractal_noise(rng, height, width, 50.0, octaves=3))[..., None]
    elif kind == "cloth":
        period = rng.uniform(3, 6)
        weave = np.sin(along * np.float32(2 * np.pi / period)) * np.sin(across * np.float32(2 * np.pi / period))
        colour = rng.uniform(0.2, 0.8, 3).astype(np.float32)
        folds = fractal_noise(rng, height, width, rng.uniform(40, 100), octaves=2)
        image = colour * (0.75 + 0.15 * weave + 0.3 * folds)[..., None]
        # Plaid: broad bands of a second colour along and across the weave.
        band = rng.uniform(20, 50)
        plaid = ((along % band) < 0.3 * band) | ((across % band) < 0.3 * band)
        image[plaid] = 0.6 * image[plaid] + 0.4 * rng.uniform(0, 1, 3).astype(np.float32)
    else:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {TABLE_KINDS}")
    # Wear: stains and small marks (crumbs, scratches, screws) scattered over any table.
    stains = fractal_noise(rng, height, width, rng.uniform(30, 80), octaves=4)
    image = image * (1 - 0.25 * np.clip(stains - 0.6, 0, 1)[..., None] / 0.4)
    for _ in range(int(rng.integers(20, 60) * height * width / 400 ** 2)):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = tuple(int(a) for a in rng.uniform(1, 5, 2))
        tone = float(rng.uniform(0.05, 0.95))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, (tone, tone, tone), -1, cv2.LINE_AA)
    return np.clip(image, 0, 1).astype(np.float32)


def object_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A tabletop object's top: a flat colour with soft shading, often a printed label.
    float32 [size, size, 3] in [0, 1]."""
    colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    light = rng.uniform(-1, 1, 2).astype(np.float32)
    shade = 0.8 + 0.25 * (light[0] * (xs - 0.5) + light[1] * (ys - 0.5))
    image = colour * shade[..., None] + 0.04 * (smooth_noise(rng, size, size, 4.0, channels=3) - 0.5)
    label_h, label_w = (rng.uniform(0.25, 0.5, 2) * size).astype(int) + 2
    # make_texture needs some room: small objects (small images) go without a label.
    if rng.random() < 0.7 and min(label_h, label_w) >= 16:
        # A printed label: a Kubric-lite texture in a rectangle near the middle.
        top, left = (size - label_h) // 2, (size - label_w) // 2
        image[top:top + label_h, left:left + label_w] = make_texture(rng, label_h, label_w)
    return np.clip(image, 0, 1).astype(np.float32)


def _rounded_box_mask(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """An antialiased rounded rectangle inside the disc of `radius` around the sprite centre."""
    half = radius * rng.uniform(0.45, 0.7, 2)
    corner = float(rng.uniform(0.1, 0.5) * half.min())
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    qx = np.maximum(np.abs(xs - size / 2) - (half[0] - corner), 0)
    qy = np.maximum(np.abs(ys - size / 2) - (half[1] - corner), 0)
    distance = np.sqrt(qx ** 2 + qy ** 2) - corner
    return np.clip(0.5 - distance, 0, 1).astype(np.float32)


def arm_sprite(rng: np.random.Generator, length: int, width: int) -> np.ndarray:
    """A robot arm's last link and gripper, pointing right (+x): RGBA float32 [H, length, 4].

    The sprite is `width` pixels tall plus room for the open gripper; the fingertip
    reaches x = length - 1. Grey, white or black, shaded like a cylinder, with bolts
    and a stripe so that it has something to track.
    """
    height = int(width * 1.4)
    centre = height / 2
    ys, xs = np.mgrid[0:height, 0:length].astype(np.float32) + np.float32(0.5)
    alpha = np.zeros((height, length), np.float32)
    palm = int(length * (1 - rng.uniform(0.08, 0.14)))
    # The link: a bar of `width` pixels, the wrist a little wider.
    alpha[(np.abs(ys - centre) < width / 2) & (xs < palm)] = 1.0
    wrist = (xs > palm - 0.12 * length) & (xs < palm) & (np.abs(ys - centre) < 0.6 * height)
    alpha[wrist] = 1.0
    # Two fingers, opened by a random gap.
    gap = rng.uniform(0.15, 0.5) * width
    finger = 0.18 * width
    for sign in (-1, 1):
        offset = centre + sign * (gap / 2 + finger / 2)
        alpha[(xs >= palm) & (np.abs(ys - offset) < finger / 2)] = 1.0
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    grey = rng.choice([0.2, 0.55, 0.85])
    cylinder = 1 - 0.55 * ((ys - centre) / (height / 2)) ** 2
    colour = np.float32(grey) * cylinder[..., None] * np.ones(3, np.float32)
    colour = colour + np.float32(0.03) * (smooth_noise(rng, height, length, 2.0, channels=3) - 0.5)
    stripe = (xs > palm - 0.3 * length) & (xs < palm - 0.24 * length)
    colour[stripe] = rng.uniform(0.2, 1.0, 3).astype(np.float32) * cylinder[stripe][:, None]
    for bolt_x in rng.uniform(0.1, 0.6, 4) * length:
        for sign in (-1, 1):
            cv2.circle(colour, (int(bolt_x), int(centre + sign * 0.3 * width)), max(2, int(0.05 * width)),
                       (0.1, 0.1, 0.1) if grey > 0.4 else (0.8, 0.8, 0.8), -1, cv2.LINE_AA)
    return np.concatenate([np.clip(colour, 0, 1), alpha[..., None]], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- motion

def wrist_camera(rng: np.random.Generator, config: RobotConfig, canvas_size: Tuple[int, int]) -> np.ndarray:
    """Image_from_canvas homographies [T, 3, 3] of a wrist camera approaching the table:
    smooth translation and rotation, a zoom that only grows, and a small shake. The
    view stays inside the canvas (the motion shrinks until it does)."""
    height, width, frames = config.height, config.width, config.frames
    canvas_h, canvas_w = canvas_size
    tau = np.linspace(0.0, 1.0, frames)
    # Ease in and out: the arm accelerates and brakes.
    ease = tau * tau * (3 - 2 * tau)

    def make_cameras(motion: float) -> np.ndarray:
        shift = _curve(rng, motion * config.camera_shift * np.array([width, height]), frames, 2)
        angle = _curve(rng, motion * np.radians(config.camera_rotation), frames, 1)[:, 0]
        approach = motion * rng.uniform(*config.camera_approach)
        zoom = np.exp(approach * ease) * 0.85  # start a little wide: the approach zooms in
        shake = motion * config.camera_shake * (smooth_noise(rng, frames, 2, 2.0)[..., 0] - 0.5) * 2
        cameras = np.empty((frames, 3, 3))
        for t in range(frames):
            cameras[t] = (_translation(width / 2 + shake[t, 0], height / 2 + shake[t, 1])
                          @ _rotation_scale(angle[t], zoom[t])
                          @ _translation(-canvas_w / 2 - shift[t, 0], -canvas_h / 2 - shift[t, 1]))
        return cameras

    return camera_inside_canvas(make_cameras, (height, width), canvas_size, frames)


def _arm_path(rng: np.random.Generator, config: RobotConfig, sprite_shape: Tuple[int, int]) -> np.ndarray:
    """Image_from_sprite homographies [T, 3, 3] of an arm reaching in from an image edge
    and pulling back part of the way, in image coordinates (it is not on the table).
    The sprite points along +x with its fingertip at x = sprite length."""
    height, width, frames = config.height, config.width, config.frames
    sprite_h, sprite_length = sprite_shape
    along = rng.uniform(0.2, 0.8)
    # Entry point on an edge and the direction pointing into the image.
    entry, inward = [(np.array([along * width, 0.0]), np.pi / 2),
                     (np.array([width, along * height]), np.pi),
                     (np.array([along * width, height]), -np.pi / 2),
                     (np.array([0.0, along * height]), 0.0)][rng.integers(4)]
    heading = inward + rng.uniform(-0.5, 0.5)
    direction = np.array([np.cos(heading), np.sin(heading)])
    reach = rng.uniform(0.35, 0.75) * min(height, width)
    tau = np.linspace(0.0, 1.0, frames)
    peak = rng.uniform(0.4, 1.0)  # when the arm is furthest in
    stays = rng.uniform(0.0, 0.7)  # how far in it is at the end of the clip
    after = (tau - peak) / max(1 - peak, 1e-6)
    extension = np.where(tau <= peak, np.sin(0.5 * np.pi * tau / peak),
                         stays + (1 - stays) * np.cos(0.5 * np.pi * np.clip(after, 0, 1)))
    start = rng.uniform(-0.15, 0.05) * min(height, width)  # the tip starts at or outside the edge
    swing = np.radians(rng.uniform(-10, 10)) * tau
    paths = np.empty((frames, 3, 3))
    for t in range(frames):
        tip = entry + direction * (start + extension[t] * reach)
        paths[t] = (_translation(*tip) @ _rotation_scale(heading + swing[t], 1.0)
                    @ _translation(-sprite_length, -sprite_h / 2))
    return paths


def sample_robot_scene(rng: np.random.Generator, config: RobotConfig) -> Scene:
    """Draws the table, objects, arm, wrist-camera path and photometric blur/exposure."""
    height, width, frames = config.height, config.width, config.frames
    canvas_h = int(np.ceil(config.canvas_scale * height))
    canvas_w = int(np.ceil(config.canvas_scale * width))
    table = table_texture(rng, canvas_h, canvas_w)
    textures = [np.concatenate([table, np.ones((canvas_h, canvas_w, 1), np.float32)], axis=-1)]
    cameras = wrist_camera(rng, config, (canvas_h, canvas_w))
    num_objects = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    has_arm = rng.random() < config.arm_probability
    layers = 1 + num_objects + int(has_arm)
    image_from_layer = np.empty((layers, frames, 3, 3))
    image_from_layer[0] = cameras
    times = np.arange(frames, dtype=np.float64)
    for layer in range(1, 1 + num_objects):
        diameter = rng.uniform(*config.object_size) * min(height, width)
        size = int(np.ceil(diameter)) + 4
        mask = (_rounded_box_mask(rng, size, diameter / 2) if rng.random() < 0.5 else
                make_shape_mask(rng, size, diameter / 2, kind=("ellipse", "polygon")[rng.integers(2)]))
        textures.append(np.concatenate([object_texture(rng, size), mask[..., None]], axis=-1))
        # On the table (canvas coordinates): in view at a random frame, at rest or pushed.
        anchor = int(rng.integers(frames))
        centre = apply_homography(np.linalg.inv(cameras[anchor]), rng.uniform([0, 0], [width, height]))
        speed = rng.uniform(0, config.object_speed) if rng.random() < config.moving_object_probability else 0.0
        heading = rng.uniform(0, 2 * np.pi)
        path = centre + speed * (times - anchor)[:, None] * np.array([np.cos(heading), np.sin(heading)])
        angle = rng.uniform(0, 2 * np.pi) + (rng.uniform(-1, 1) * 0.03 * times if speed else 0 * times)
        for t in range(frames):
            image_from_layer[layer, t] = cameras[t] @ (_translation(*path[t]) @ _rotation_scale(angle[t], 1.0)
                                                       @ _translation(-size / 2, -size / 2))
    if has_arm:
        length = int(rng.uniform(0.9, 1.3) * max(height, width))
        sprite = arm_sprite(rng, length, int(rng.uniform(*config.arm_width) * min(height, width)))
        textures.append(sprite)
        image_from_layer[-1] = _arm_path(rng, config, sprite.shape[:2])

    # Motion blur along the camera's motion at the image centre, as long as the exposure
    # lets the image move; gain drift is the auto exposure. Drawn even for a clean clip,
    # so that clean and photometric clips of one seed share scene, queries and tracks.
    centre = np.array([width / 2, height / 2])
    canvas_centre = apply_homography(np.linalg.inv(cameras), centre)
    seen = apply_homography(cameras, canvas_centre[np.clip(np.arange(frames) - 1, 0, None)])
    velocity = centre - seen
    exposure = rng.uniform(*config.exposure_time)
    blur = np.round(np.linalg.norm(velocity, axis=-1) * exposure).astype(np.int32)
    blur_length = np.where(blur >= 2, blur + 1 - blur % 2, 0).astype(np.int32)  # odd: centred kernel
    blur_angle = np.degrees(np.arctan2(velocity[:, 1], velocity[:, 0])).astype(np.float32)
    gain = 1 + np.cumsum(rng.uniform(-1, 1, frames)) * config.exposure_flicker / np.sqrt(frames)
    light_gain = np.clip(gain, 0.6, 1.4).astype(np.float32)
    if not config.photometric:
        blur_length = np.zeros(frames, np.int32)
        light_gain = np.ones(frames, np.float32)
    return Scene(textures=textures, image_from_layer=image_from_layer,
                 wobble_amplitude=np.zeros((layers, 2)), wobble_vector=np.zeros((layers, 2, 2)),
                 wobble_phase=np.zeros((layers, frames, 2)), layer_gain=np.ones((layers, frames), np.float32),
                 light_gain=light_gain, light_bias=np.zeros(frames, np.float32),
                 blur_length=blur_length, blur_angle=blur_angle,
                 noise_std=0.0, noise_seed=int(rng.integers(2 ** 63)))


def sensor(rng: np.random.Generator, video: np.ndarray, config: RobotConfig) -> np.ndarray:
    """The camera's look, applied to a rendered uint8 video [T, H, W, 3]: lens softness,
    vignetting, colour cast with white-balance drift, gamma and signal-dependent noise.
    Pixel-wise maps and centred blurs only: geometry stays exact."""
    frames, height, width = video.shape[:3]
    sigma = rng.uniform(*config.lens_blur)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + np.float32(0.5)
    radius2 = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / np.float32((width / 2) ** 2 + (height / 2) ** 2)
    vignette = (1 - np.float32(rng.uniform(*config.vignetting)) * radius2)[..., None]
    cast_start = 1 + rng.uniform(-config.colour_cast, config.colour_cast, 3)
    cast_end = cast_start + rng.uniform(-0.3, 0.3, 3) * config.colour_cast
    cast_start, cast_end = cast_start / cast_start.mean(), cast_end / cast_end.mean()
    gamma = np.float32(rng.uniform(*config.gamma))
    read, shot = np.float32(rng.uniform(*config.read_noise)), np.float32(rng.uniform(*config.shot_noise))
    out = np.empty_like(video)
    for t in range(frames):
        frame = video[t].astype(np.float32) / 255
        frame = cv2.GaussianBlur(frame, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        cast = (cast_start + (cast_end - cast_start) * t / max(frames - 1, 1)).astype(np.float32)
        frame = np.clip(frame * vignette * cast, 0, 1) ** gamma
        std = np.sqrt(read ** 2 + shot * frame)
        frame = frame + std * rng.standard_normal(frame.shape, dtype=np.float32)
        out[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def generate_robot_clip(seed: int, config: RobotConfig = RobotConfig()) -> Clip:
    """One clip with exact tracks; the same seed and config always give identical arrays."""
    rng = np.random.default_rng(seed)
    synthetic = config.synthetic()
    scene = sample_robot_scene(rng, config)
    video, layer_ids = render_scene(scene, synthetic)
    if config.photometric:
        video = sensor(np.random.default_rng(scene.noise_seed), video, config)
    query_frames, track_layers, surface_points = sample_queries(rng, scene, layer_ids, synthetic)
    tracks = track_surface_points(scene, track_layers, surface_points)
    return Clip(video=video, tracks=tracks, occluded=occlusion(tracks, track_layers, layer_ids),
                query_frames=query_frames, track_layers=track_layers, surface_points=surface_points,
                layer_ids=layer_ids, scene=scene, seed=seed)


# ----------------------------------------------------------------------------- outputs

def labeled_seeds(first_seed: int, num_clips: int) -> range:
    if first_seed < 0 or first_seed + num_clips > UNLABELED_SEED_OFFSET:
        raise ValueError(f"labeled clips take seeds in [0, {UNLABELED_SEED_OFFSET}) so that they never "
                         f"overlap the unlabeled episodes; got {first_seed} ... {first_seed + num_clips - 1}")
    return range(first_seed, first_seed + num_clips)


def unlabeled_seeds(first_episode: int, num_episodes: int) -> range:
    if first_episode < 0 or num_episodes < 0:
        raise ValueError(f"episode indices must be non-negative, got {first_episode} and {num_episodes}")
    return range(UNLABELED_SEED_OFFSET + first_episode, UNLABELED_SEED_OFFSET + first_episode + num_episodes)


def write_labeled(path, first_seed: int, num_clips: int, config: RobotConfig = RobotConfig(),
                  generate: Callable[[int, Any], Clip] = generate_robot_clip, prefix: str = "robot") -> Path:
    """Held-out labeled clips as a TAP-Vid pickle (names ``<prefix>_<seed>``).

    `generate(seed, config)` makes a clip; other domains pass their own generator and config.
    """
    seeds = labeled_seeds(first_seed, num_clips)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tapvid_pickle(path, (generate(seed, config) for seed in seeds),
                        names=[f"{prefix}_{seed}" for seed in seeds])
    return path


def episode_stamps(rng: np.random.Generator, episode_lengths: Sequence[int], fps: float,
                   gap_range: Tuple[float, float] = (3.0, 20.0), start_ns: int = 1_700_000_000 * 10 ** 9
                   ) -> List[np.ndarray]:
    """Per-episode int64 stamps (ns): frames 1/fps apart with a little jitter inside an
    episode, a pause of `gap_range` seconds between episodes (the robot resetting)."""
    stamps, now = [], float(start_ns)
    period = 1e9 / fps
    for length in episode_lengths:
        jitter = rng.uniform(-0.05, 0.05, length) * period
        episode = now + np.arange(length) * period + jitter
        stamps.append(np.round(episode).astype(np.int64))
        now = episode[-1] + rng.uniform(*gap_range) * 1e9
    return stamps


def write_bag(path, first_episode: int, num_episodes: int, config: RobotConfig = RobotConfig(frames=48),
              topic: str = "/wrist_camera/image_raw", storage: str = "mcap", compressed: bool = False,
              fps: float = 15.0, seed: int = 0, generate: Callable[[int, Any], Clip] = generate_robot_clip,
              frame_id: str = "wrist_camera_optical_frame") -> dict:
    """Unlabeled episodes as one rosbag2 image stream with gaps between episodes.

    `generate(seed, config)` makes an episode (another domain's generator and config
    work alike: the config needs `frames`, `height`, `width` and `replace(num_points=0)`).
    Returns a summary (episodes, frames, seeds, topic, storage, bytes) that is also
    written beside the bag as ``<path>.json``.
    """
    from ..logs import write_image_bag  # rosbags: imported where it is needed

    seeds = unlabeled_seeds(first_episode, num_episodes)
    config = config.replace(num_points=0)  # no labels: nothing to sample
    videos = [generate(s, config).video for s in seeds]
    stamps = episode_stamps(np.random.default_rng(seed), [len(v) for v in videos], fps)
    if compressed:
        topic = topic.replace("image_raw", "image_raw/compressed") if topic.endswith("image_raw") else topic
    path = Path(path)
    write_image_bag(path, np.concatenate(videos), np.concatenate(stamps), topic, storage=storage,
                    compressed=compressed, frame_id=frame_id)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    summary = {"bag": str(path), "topic": topic, "storage": storage, "compressed": compressed,
               "episodes": num_episodes, "frames_per_episode": config.frames,
               "frames": int(sum(len(v) for v in videos)), "size": [config.height, config.width],
               "fps": fps, "seeds": [seeds.start, seeds.stop - 1], "bytes": size}
    Path(f"{path}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.domains.robot_domain",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    labeled = commands.add_parser("labeled", help="labeled held-out clips as a TAP-Vid pickle")
    labeled.add_argument("--out", required=True, help="TAP-Vid pickle to write")
    labeled.add_argument("--num-clips", type=int, default=20, help="clips (default 20)")
    labeled.add_argument("--seed", type=int, default=0, help=f"first clip's seed (below {UNLABELED_SEED_OFFSET})")
    labeled.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    labeled.add_argument("--num-points", type=int, default=64, help="tracks per clip (default 64)")
    labeled.add_argument("--clean", action="store_true",
                         help="no sensor effects (the same scenes, to tell the sensor's look from the rest)")
    bag = commands.add_parser("bag", help="unlabeled episodes as a rosbag2 bag")
    bag.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    bag.add_argument("--episodes", type=int, default=24, help="episodes (default 24)")
    bag.add_argument("--first-episode", type=int, default=0,
                     help="index of the first episode (its seed is 2**30 + index)")
    bag.add_argument("--frames", type=int, default=48, help="frames per episode")
    bag.add_argument("--fps", type=float, default=15.0, help="frame rate inside an episode (default 15)")
    bag.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    bag.add_argument("--compressed", action="store_true", help="JPEG sensor_msgs/CompressedImage")
    bag.add_argument("--topic", default="/wrist_camera/image_raw",
                     help="image topic (with --compressed, /compressed is appended to .../image_raw)")
    for sub in (labeled, bag):
        sub.add_argument("--height", type=int, default=RobotConfig.height, help="image height (default 240)")
        sub.add_argument("--width", type=int, default=RobotConfig.width, help="image width (default 320)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.command == "labeled":
        config = RobotConfig(frames=args.frames, num_points=args.num_points, height=args.height, width=args.width,
                             photometric=not args.clean)
        path = write_labeled(args.out, args.seed, args.num_clips, config)
        print(f"wrote {args.num_clips} labeled clips (seeds {args.seed}..{args.seed + args.num_clips - 1}) "
              f"to {path} in {time.perf_counter() - started:.1f} s")
    else:
        config = RobotConfig(frames=args.frames, height=args.height, width=args.width)
        summary = write_bag(args.out, args.first_episode, args.episodes, config, args.topic, args.storage,
                            args.compressed, args.fps)
        print(f"wrote {summary['frames']} frames ({summary['episodes']} episodes) on {summary['topic']} to "
              f"{summary['bag']} ({summary['bytes'] / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
