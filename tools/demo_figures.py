"""A still (PNG) and a short animation (GIF) of tracks, for the documentation.

    python tools/demo_figures.py VIDEO TRACKS.npz --still docs/images/demo.png --still-frame 40 \
        --scale 3 --gif docs/images/demo.gif

TRACKS.npz is what `bootstap-track` writes (`tracks` [N, T, 2] in the video's pixels,
`occluded` [N, T]); `make docs-figures` runs this on `make demo`'s output. Frames are
enlarged (`--scale`, `--gif-scale`) before the tracks are drawn (with `bootstap_ros.render`, as
`bootstap-track --render` draws them), so that dots and trails stay sharp in a small
clip. The GIF takes every `--step`-th frame of the first `--seconds` of the clip and a
palette of `--colors` colours, which keeps it small.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bootstap_ros.render import colors_for_ids, draw_tracks
from bootstap_ros.video import open_video


def drawn_frames(video, tracks, occluded, scale, trail):
    """Frames of `video` enlarged `scale` times with the tracks drawn, one per frame of tracks."""
    tracks = np.asarray(tracks, np.float64) * scale  # raster edges stay on edges when scaled
    occluded = np.asarray(occluded, bool)
    visible_tracks = np.where(occluded[..., None], np.nan, tracks)
    colors = colors_for_ids(np.arange(len(tracks)))
    for t, frame in enumerate(video):
        if t >= tracks.shape[1]:
            break
        big = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        history = visible_tracks[:, max(0, t - trail + 1):t + 1] if trail > 1 else None
        yield draw_tracks(big, tracks[:, t], ~occluded[:, t], history, colors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="the video the tracks were made on")
    parser.add_argument("tracks", help="bootstap-track's .npz")
    parser.add_argument("--still", type=Path, help="PNG of one frame with its tracks")
    parser.add_argument("--still-frame", type=int, default=-1,
                        help="frame of the still (default -1: the last, with the longest trails)")
    parser.add_argument("--gif", type=Path, help="GIF of the first --seconds")
    parser.add_argument("--scale", type=float, default=2.0, help="enlarge the still this many times")
    parser.add_argument("--gif-scale", type=float, default=1.5, help="enlarge the GIF's frames this many times")
    parser.add_argument("--trail", type=int, default=8, help="frames of trail behind each point")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the GIF's clip")
    parser.add_argument("--step", type=int, default=3, help="every STEP-th frame goes in the GIF")
    parser.add_argument("--colors", type=int, default=40, help="GIF palette size")
    args = parser.parse_args(argv)
    if not (args.still or args.gif):
        parser.error("nothing to write: give --still and/or --gif")

    data = np.load(args.tracks)
    tracks, occluded = data["tracks"], data["occluded"]
    video = open_video(args.video)
    fps = video.fps or 25.0

    if args.still:
        frames = list(drawn_frames(video, tracks, occluded, args.scale, args.trail))
        if not frames:
            raise SystemExit(f"{args.video}: no frames")
        args.still.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[args.still_frame]).save(args.still, optimize=True)
        print(f"wrote {args.still} ({args.still.stat().st_size / 1024:.0f} KiB)")
    if args.gif:
        frames = list(drawn_frames(video, tracks, occluded, args.gif_scale, args.trail))
        if not frames:
            raise SystemExit(f"{args.video}: no frames")
        count = min(len(frames), max(1, round(args.seconds * fps)))
        chosen = frames[:count:args.step]
        # One palette for every frame (from a mosaic of them) keeps colours steady and the file small.
        mosaic = Image.fromarray(np.concatenate(chosen[::max(1, len(chosen) // 8)], axis=0))
        palette = mosaic.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
        images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE)
                  for f in chosen]
        args.gif.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(args.gif, save_all=True, append_images=images[1:], optimize=True,
                       duration=round(1000 * args.step / fps), loop=0)
        print(f"wrote {args.gif}: {len(images)} frames, "
              f"{args.gif.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
