"""The second evaluation generator: real frames under known warps."""

import pickle

import cv2
import numpy as np
import pytest

from bootstap_ros_training.domains.real_warps import make_clip, read_frames, write_dataset


def _gradient_frame(height=240, width=320):
    """Colour encodes position: red = x, green = y (source pixels), blue constant."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 / (width - 1), y * 255 / (height - 1), np.full(x.shape, 60.0)], -1
                    ).round().astype(np.uint8)


def test_every_visible_track_stays_on_its_surface_point():
    # With a position-coded source frame, the colour under a track names the source
    # pixel it shows; an exact track shows the same one in every frame it is visible.
    frames = [_gradient_frame()]
    clip = make_clip(3, frames, num_frames=12, num_points=40)
    video, occluded = clip["video"], clip["occluded"]
    tracks = clip["points"] * 256
    assert video.shape == (12, 256, 256, 3) and tracks.shape == (40, 12, 2)
    assert not occluded[:, 0].any() and occluded.any() and (~occluded[:, 1:]).any()
    pixel = np.floor(tracks).astype(int)
    drifts = []
    for n in range(len(tracks)):
        frames_visible = np.flatnonzero(~occluded[n])
        colours = video[frames_visible, pixel[n, frames_visible, 1], pixel[n, frames_visible, 0], :2]
        decoded = colours.astype(float) * [319 / 255, 239 / 255]  # source (x, y)
        drifts.append(np.abs(decoded - decoded[0]).max())
    # Quantisation (one uint8 level is about 1.3 source px, doubled by the canvas
    # upsampling) bounds the drift; the points move by tens of pixels.
    assert max(drifts) < 4.0, max(drifts)
    assert np.abs(tracks[:, -1] - tracks[:, 0])[~occluded[:, -1]].max() > 10


def test_clips_are_deterministic_and_written_as_tapvid(tmp_path):
    frames = [_gradient_frame(), np.ascontiguousarray(_gradient_frame()[::-1])]
    np.testing.assert_array_equal(make_clip(5, frames)["video"], make_clip(5, frames)["video"])
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for frame in frames * 4:
        writer.write(frame[..., ::-1])
    writer.release()
    assert len(read_frames([str(video)], every=2)) == 4
    with pytest.raises(ValueError, match="no frames"):
        read_frames([str(tmp_path / "missing.mp4")])
    path = write_dataset(tmp_path / "set.pkl", [0, 1], videos=[str(video)], num_frames=6, num_points=8)
    data = pickle.loads(path.read_bytes())
    assert sorted(data) == ["real_warp_0", "real_warp_1"]
    entry = data["real_warp_0"]
    assert entry["video"].shape == (6, 256, 256, 3) and entry["points"].shape == (8, 6, 2)
    assert entry["occluded"].dtype == bool and (entry["points"][~entry["occluded"]] <= 1).all()
