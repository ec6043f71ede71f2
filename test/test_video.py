"""Tests for bootstap_ros.video: reading files, folders and arrays; writing videos."""

import cv2
import numpy as np
import pytest

from bootstap_ros.video import VideoError, VideoWriter, natural_sort_key, open_video

RED = (255, 0, 0)


def _coloured_frames(num_frames=5, height=48, width=64):
    """Frames whose left half is red and right half blue, in RGB."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[:, :, : width // 2] = RED
    frames[:, :, width // 2:] = (0, 0, 255)
    return frames


def _write_png(path, rgb):
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def test_mp4_round_trip_keeps_count_size_and_rgb_order(tmp_path):
    frames = _coloured_frames()
    path = tmp_path / "sub" / "clip.mp4"
    with VideoWriter(path, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.num_written == 5

    source = open_video(path)
    assert source.size == (48, 64)
    assert source.fps == pytest.approx(12)
    assert source.num_frames == 5
    assert not source.num_frames_is_exact
    video = source.read_all()
    assert video.shape == (5, 48, 64, 3) and video.dtype == np.uint8
    left, right = video[:, 24, 10].astype(int), video[:, 24, 54].astype(int)
    assert (left[:, 0] > 200).all() and (left[:, 1:] < 60).all(), "red must stay red"
    assert (right[:, 2] > 200).all() and (right[:, :2] < 60).all(), "blue must stay blue"
    # Iterating again starts from the beginning, with contiguous frames.
    again = list(source)
    assert len(again) == 5 and all(f.flags.c_contiguous for f in again)


def test_image_folder_natural_order_and_conversions(tmp_path):
    for index in (10, 2, 1):
        frame = np.full((8, 6, 3), index, np.uint8)
        _write_png(tmp_path / f"frame{index}.png", frame)
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_video(tmp_path)
    assert source.fps is None
    assert source.num_frames == 3 and source.num_frames_is_exact
    assert source.size == (8, 6)
    assert [int(f[0, 0, 0]) for f in source] == [1, 2, 10]


def test_image_folder_gray_and_rgba_become_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((4, 5), 77, np.uint8))
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGRA order
    bgra[..., 3] = 128
    cv2.imwrite(str(tmp_path / "b.png"), bgra)
    video = open_video(tmp_path).read_all()
    assert video.shape == (2, 4, 5, 3)
    assert (video[0] == 77).all()
    assert (video[1] == (200, 0, 0)).all()


def test_image_folder_size_mismatch_names_file(tmp_path):
    _write_png(tmp_path / "frame1.png", np.zeros((8, 6, 3), np.uint8))
    _write_png(tmp_path / "frame2.png", np.zeros((9, 6, 3), np.uint8))
    source = open_video(tmp_path)
    with pytest.raises(VideoError, match="frame2.png.*same size"):
        source.read_all()


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(VideoError, match="no images"):
        open_video(tmp_path)
    with pytest.raises(VideoError, match="no such file"):
        open_video(tmp_path / "nope.mp4")


def test_unreadable_video_and_image(tmp_path):
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"this is not a video")
    with pytest.raises(VideoError, match="bad.mp4"):
        open_video(bad_video)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match="0.png.*cannot read"):
        open_video(tmp_path / "frames")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "clip.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(VideoError, match="unsupported input"):
        open_video(path)


def test_npy_source_is_lazy_and_exact(tmp_path):
    frames = _coloured_frames(num_frames=3)
    np.save(tmp_path / "clip.npy", frames)
    source = open_video(tmp_path / "clip.npy")
    assert source.fps is None and source.num_frames == 3 and source.size == (48, 64)
    assert np.array_equal(source.read_all(), frames)
    assert np.array_equal(next(iter(source)), frames[0])


def test_npy_gray_frames_become_rgb(tmp_path):
    np.save(tmp_path / "gray.npy", np.full((2, 4, 5), 9, np.uint8))
    video = open_video(tmp_path / "gray.npy").read_all()
    assert video.shape == (2, 4, 5, 3) and (video == 9).all()


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 5, 3), np.float32), "uint8, found float32"),
    (np.zeros((4, 5, 3, 2), np.uint8), r"\[T, H, W, 3\].*\(4, 5, 3, 2\)"),
    (np.zeros((4,), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((0, 4, 5, 3), np.uint8), "no frames"),
])
def test_npy_validation(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(VideoError, match=message):
        open_video(path)


def test_npy_that_is_not_an_array(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"garbage")
    with pytest.raises(VideoError, match="bad.npy.*not a readable"):
        open_video(path)


def test_writer_png_folder(tmp_path):
    frames = _coloured_frames(num_frames=2)
    out = tmp_path / "nested" / "frames"
    with VideoWriter(out, fps=30) as writer:
        for frame in frames:
            writer.write(frame)
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png"]
    assert np.array_equal(open_video(out).read_all(), frames)


def test_writer_validation(tmp_path):
    with pytest.raises(VideoError, match="unsupported output"):
        VideoWriter(tmp_path / "out.gif", fps=30)
    with pytest.raises(VideoError, match="fps"):
        VideoWriter(tmp_path / "out.mp4", fps=0)
    with VideoWriter(tmp_path / "out", fps=30) as writer:
        with pytest.raises(VideoError, match="uint8"):
            writer.write(np.zeros((4, 4, 3), np.float32))
        writer.write(np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(VideoError, match="frame 1 is 5x4"):
            writer.write(np.zeros((5, 4, 3), np.uint8))


def test_writer_that_opencv_cannot_open(tmp_path):
    # A folder already sits where the video file should go.
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(VideoError, match="out.mp4.*cannot open a writer"):
        with VideoWriter(tmp_path / "out.mp4", fps=30) as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8))


def test_writer_pads_odd_sizes_instead_of_cropping(tmp_path):
    frame = np.full((5, 7, 3), 255, np.uint8)
    with VideoWriter(tmp_path / "odd.mp4", fps=30) as writer:
        for _ in range(3):
            writer.write(frame)
    source = open_video(tmp_path / "odd.mp4")
    assert source.size == (6, 8)
    assert source.read_all()[:, 2, 3].min() > 200


def test_natural_sort_key():
    names = ["frame10.png", "Frame2.png", "frame1.png", "a.png"]
    assert sorted(names, key=natural_sort_key) == ["a.png", "frame1.png", "Frame2.png",
                                                   "frame10.png"]


def test_npy_single_image_is_not_read_as_a_video(tmp_path):
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(VideoError, match=r"single image \[H, W, 3\].*\[T, H, W, 3\].*image\[None\]"):
        open_video(path)
