"""Video input and output: the only place that knows about files of frames.

`open_video` turns a video file, a folder of images or a ``.npy`` array into a
`VideoSource` that yields uint8 RGB frames ``[H, W, 3]`` one at a time, so a long
video never has to fit in memory. `VideoWriter` writes RGB frames to an ``.mp4``
(or another video container) or to a folder of PNGs.

OpenCV decodes and encodes in BGR order; the conversion to and from RGB happens
here and nowhere else. Everything that goes wrong with an input raises
`VideoError`, whose message names the path and what was wrong with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class VideoError(ValueError):
    """An input or output video that cannot be used, with the reason."""


class VideoSource:
    """Frames of one video, read lazily as contiguous uint8 RGB ``[H, W, 3]``.

    Attributes:
      path: where the frames come from.
      fps: frames per second, or None when the source does not say (image
        folders, ``.npy`` arrays): the caller then uses its own default.
      num_frames: number of frames. For video files this is the container's
        own count, which can be off by a few frames; `num_frames_is_exact`
        tells which case applies.
      num_frames_is_exact: False when `num_frames` is the container's estimate.
      size: ``(height, width)`` of every frame.

    Iterating twice reads the video twice from the start.
    """

    def __init__(self, path: Path, fps: Optional[float], num_frames: int,
                 num_frames_is_exact: bool, size: Tuple[int, int]):
        self.path = path
        self.fps = fps
        self.num_frames = num_frames
        self.num_frames_is_exact = num_frames_is_exact
        self.size = size

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """All frames as one uint8 array ``[T, H, W, 3]``."""
        frames = list(self)
        return np.stack(frames) if frames else np.zeros((0, *self.size, 3), np.uint8)

    def __repr__(self) -> str:
        count = self.num_frames if self.num_frames_is_exact else f"~{self.num_frames}"
        return (f"{type(self).__name__}({str(self.path)!r}, frames={count}, "
                f"size={self.size}, fps={self.fps})")


def open_video(path) -> VideoSource:
    """Opens a video file, a folder of images or a ``.npy`` array ``[T, H, W, 3]``."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolderSource(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return ArraySource(path)
    if suffix in VIDEO_SUFFIXES:
        return VideoFileSource(path)
    raise VideoError(
        f"{path}: unsupported input '{suffix}'; expected a video file "
        f"({', '.join(VIDEO_SUFFIXES)}), a folder of images or a .npy array")


class VideoFileSource(VideoSource):
    """A video file decoded by OpenCV."""

    def __init__(self, path: Path):
        capture = _open_capture(path)
        try:
            # Reading a frame is the only reliable test that the codec works:
            # a capture can open and report properties for an undecodable file.
            ok, first = capture.read()
            if not ok or first is None:
                raise VideoError(f"{path}: no frames could be decoded")
            fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        super().__init__(
            path,
            fps=fps if fps and np.isfinite(fps) and fps > 0 else None,
            num_frames=max(count, 1),
            num_frames_is_exact=False,
            size=first.shape[:2],
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = _open_capture(self.path)
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                yield _to_rgb(frame, bgr=True, where=self.path)
        finally:
            capture.release()


def _open_capture(path: Path) -> "cv2.VideoCapture":
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path}: OpenCV cannot open this video (unreadable file or "
                         "unsupported codec)")
    return capture


class ImageFolderSource(VideoSource):
    """A folder of images, one frame per file, in natural name order.

    Image sizes are checked as the frames are read (reading every file up front
    would defeat lazy reading); a file whose size differs from the first raises.
    """

    def __init__(self, path: Path):
        files = sorted(
            (f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda f: natural_sort_key(f.name))
        if not files:
            raise VideoError(f"{path}: folder holds no images "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        self.files = files
        first = _read_image(files[0])
        super().__init__(path, fps=None, num_frames=len(files),
                         num_frames_is_exact=True, size=first.shape[:2])

    def __iter__(self) -> Iterator[np.ndarray]:
        for file in self.files:
            frame = _read_image(file)
            if frame.shape[:2] != self.size:
                raise VideoError(
                    f"{file}: image is {frame.shape[0]}x{frame.shape[1]} (HxW) but the "
                    f"first image {self.files[0].name} is {self.size[0]}x{self.size[1]}; "
                    "all frames must have the same size")
            yield frame


def natural_sort_key(name: str):
    """Sort key that orders embedded numbers by value: frame2 before frame10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", name) if part]


def _read_image(file: Path) -> np.ndarray:
    # IMREAD_COLOR turns grayscale into 3 channels, drops alpha and reduces
    # 16-bit images to 8 bits, which is what the tracker wants.
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"{file}: OpenCV cannot read this image")
    return _to_rgb(image, bgr=True, where=file)


class ArraySource(VideoSource):
    """A ``.npy`` array of frames, memory-mapped so only the frames in use are loaded.

    Expects uint8 ``[T, H, W, 3]`` RGB; ``[T, H, W]`` and ``[T, H, W, 1]``
    (grayscale) and ``[T, H, W, 4]`` (RGBA) are converted to RGB frame by frame. A single
    image ``[H, W, 3]`` (or ``[H, W, 4]``) is refused rather than read as H gray frames.
    """

    def __init__(self, path: Path):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise VideoError(f"{path}: not a readable .npy array ({error})") from error
        if array.dtype != np.uint8:
            raise VideoError(f"{path}: frames must be uint8, found {array.dtype}; "
                             "convert with (frames * 255).round().astype(np.uint8) "
                             "for floats in [0, 1]")
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            # [T, H, W] gray frames only 3 or 4 pixels wide are not a video anyone tracks.
            raise VideoError(f"{path}: shape {tuple(array.shape)} is a single image [H, W, 3], not a "
                             "video: a video is [T, H, W, 3]; save one frame as np.save(path, image[None]) "
                             "or as a .png")
        channels_ok = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in (1, 3, 4))
        if not channels_ok:
            raise VideoError(f"{path}: expected an array [T, H, W, 3] (RGB), found shape "
                             f"{tuple(array.shape)}")
        if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
            raise VideoError(f"{path}: array of shape {tuple(array.shape)} holds no frames")
        self.array = array
        super().__init__(path, fps=None, num_frames=array.shape[0],
                         num_frames_is_exact=True, size=tuple(array.shape[1:3]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.array:
            yield _to_rgb(np.asarray(frame), bgr=False, where=self.path)

    def read_all(self) -> np.ndarray:
        if self.array.ndim == 4 and self.array.shape[-1] == 3:
            return np.array(self.array)  # one copy out of the memory map
        return super().read_all()


def _to_rgb(frame: np.ndarray, bgr: bool, where: Path) -> np.ndarray:
    """Any 8-bit gray, gray+1, colour or colour+alpha frame as contiguous RGB."""
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame[..., None], 3, axis=-1))
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise VideoError(f"{where}: frame of shape {frame.shape} is not an image")
    frame = frame[..., :3]
    if bgr:
        frame = frame[..., ::-1]
    return np.ascontiguousarray(frame)


class VideoWriter:
    """Writes uint8 RGB frames ``[H, W, 3]`` to a video file or a folder of PNGs.

    A path ending in a video suffix (``.mp4`` and friends) becomes one video
    encoded with OpenCV's ``mp4v`` codec; a path without a suffix becomes a
    folder of ``frame_000000.png`` files. Parent folders are created. The
    size is fixed by the first frame. The video codec needs even sizes and
    OpenCV would silently crop an odd row or column, so video frames of odd
    height or width get one black row or column added at the bottom or right
    instead. Use as a context manager::

        with VideoWriter("out.mp4", fps=30) as writer:
            for frame in frames:
                writer.write(frame)
    """

    def __init__(self, path, fps: float = 30.0):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            self.to_folder = False
        elif suffix == "":
            self.to_folder = True
        else:
            raise VideoError(f"{self.path}: unsupported output '{suffix}'; use a video "
                             f"suffix ({', '.join(VIDEO_SUFFIXES)}) or a folder path "
                             "without a suffix for PNG frames")
        if not (fps and np.isfinite(fps) and fps > 0):
            raise VideoError(f"{self.path}: fps must be a positive number, got {fps!r}")
        self.fps = float(fps)
        self.size: Optional[Tuple[int, int]] = None
        self.num_written = 0
        self._writer = None

    def write(self, frame_rgb: np.ndarray) -> None:
        frame_rgb = np.asarray(frame_rgb)
        if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[-1] != 3:
            raise VideoError(f"{self.path}: frames must be uint8 [H, W, 3] RGB, got "
                             f"{frame_rgb.dtype} {frame_rgb.shape}")
        if self.size is None:
            self._open(frame_rgb.shape[:2])
        elif frame_rgb.shape[:2] != self.size:
            raise VideoError(f"{self.path}: frame {self.num_written} is "
                             f"{frame_rgb.shape[0]}x{frame_rgb.shape[1]} but earlier frames "
                             f"are {self.size[0]}x{self.size[1]} (HxW)")
        bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
        if self.to_folder:
            file = self.path / f"frame_{self.num_written:06d}.png"
            if not cv2.imwrite(str(file), bgr):
                raise VideoError(f"{file}: OpenCV could not write this PNG")
        else:
            height, width = self.size
            if height % 2 or width % 2:
                bgr = cv2.copyMakeBorder(bgr, 0, height % 2, 0, width % 2,
                                         cv2.BORDER_CONSTANT, value=(0, 0, 0))
            self._writer.write(bgr)
        self.num_written += 1

    def _open(self, size: Tuple[int, int]) -> None:
        self.size = size
        target = self.path if self.to_folder else self.path.parent
        target.mkdir(parents=True, exist_ok=True)
        if self.to_folder:
            return
        height, width = size[0] + size[0] % 2, size[1] + size[1] % 2
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                 self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            raise VideoError(f"{self.path}: OpenCV cannot open a writer with codec mp4v "
                             f"for {width}x{height} at {self.fps} fps; try an .mp4 path or "
                             "a folder of PNGs (a path without suffix)")
        self._writer = writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
