"""Regenerate test/data/official_reference.npz from the official tapnet PyTorch code.

The file holds the official model's outputs, online (one causal step per frame, the
last refinement iteration of the last resolution, as its live demo runs) and offline
(its forward: the mean over resolutions of each one's last iteration), for the cases
in `CASES`: the full BootsTAPIR and TAPIR architectures with deterministic weights
(`reference_weights` in test/test_official_parity.py), small non-square clips and points
queried on different frames, at softmax temperatures 10 and 20, and with refinement
ladders up to 512x512 and 384x512 (`generate_default_resolutions(top, (256, 256))`).
The project's test compares its own outputs against them.

One correction is applied for the 384x512 ladder: the official torch
`utils.map_coordinates_2d` divides both coordinates by the grid height, which is
right for square grids only (the JAX model samples in pixels); for that case it is
replaced by the same bilinear sampling normalised by height and width.

Usage (tapnet is not a dependency of this project; put a checkout, and its einshape and
dm-tree dependencies, on the path):
    PYTHONPATH=/path/to/tapnet python tools/make_official_reference.py
"""

import contextlib
import importlib.util
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_parity_module():
    spec = importlib.util.spec_from_file_location("parity", ROOT / "test" / "test_official_parity.py")
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    return parity


def sample_2d_by_height_and_width(feats, coordinates):
    """Bilinear samples of feats [B, T, h, w, C] at coordinates [B, P, T, S, (y, x)], zero outside."""
    b, t, h, w, c = feats.shape
    images = feats.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    _, p, _, s, _ = coordinates.shape
    yx = coordinates.permute(0, 2, 1, 3, 4).reshape(b * t, p, s, 2).float()
    normalized = (2 * yx / torch.tensor([h, w], dtype=torch.float32) - 1).flip(-1)
    out = F.grid_sample(images, normalized, mode="bilinear", align_corners=False, padding_mode="zeros")
    return out.permute(0, 2, 3, 1).reshape(b, t, p, s, c).permute(0, 2, 1, 3, 4)


@contextlib.contextmanager
def sampling_fixed_for_non_square_grids(enabled):
    from tapnet.torch import utils

    original = utils.map_coordinates_2d
    if enabled:
        utils.map_coordinates_2d = sample_2d_by_height_and_width
    try:
        yield
    finally:
        utils.map_coordinates_2d = original


def run_official(case, video, queries_tyx, state_dict):
    """{online,offline}_{tracks,occlusion,expected_dist} of the official model for one case."""
    from tapnet.torch import tapir_model, utils

    frames = torch.from_numpy(video)

    def pre(x):
        return x.float() / 255 * 2 - 1

    top = case["refine_resolution"]
    ladder = [(256, 256)] if top is None else utils.generate_default_resolutions(top, (256, 256))
    options = dict(pyramid_level=1, extra_convs=case["extra_convs"],
                   softmax_temperature=case["softmax_temperature"])
    causal = tapir_model.TAPIR(use_casual_conv=True, **options).eval()
    causal.load_state_dict(state_dict)
    n, t_total = len(queries_tyx), video.shape[0]
    features = causal.get_query_features(pre(frames[None, :1]), False, torch.zeros(1, n, 3),
                                         refinement_resolutions=ladder)
    state = causal.construct_initial_causal_state(n, len(features.resolutions) - 1)
    online = {k: np.full((n, t_total) + s, np.nan, np.float32)
              for k, s in (("tracks", (2,)), ("occlusion", ()), ("expected_dist", ()))}
    for t in range(t_total):
        frame = pre(frames[None, t:t + 1])
        for i in np.flatnonzero(queries_tyx[:, 0] == t):
            point = torch.tensor([[[0.0, queries_tyx[i, 1], queries_tyx[i, 2]]]])
            new = causal.get_query_features(frame, False, point, refinement_resolutions=ladder)
            features, state = causal.update_query_features(features, new, np.array([i]), state)
        out = causal.estimate_trajectories(
            frame.shape[-3:-1], False, causal.get_feature_grids(frame, False, ladder), features, None, 64,
            causal_context=state, get_causal_context=True)
        state = out["causal_context"]
        started = queries_tyx[:, 0] <= t
        for key in online:
            online[key][started, t] = out[key][-1][0, started, 0].numpy()

    offline_model = tapir_model.TAPIR(use_casual_conv=False, **options).eval()
    offline_model.load_state_dict(state_dict)
    offline = offline_model(pre(frames[None]), torch.from_numpy(queries_tyx)[None],
                            refinement_resolutions=ladder)
    result = {f"online_{k}": v for k, v in online.items()}
    result.update({f"offline_{k}": offline[k][0].numpy() for k in ("tracks", "occlusion", "expected_dist")})
    return result


def main():
    parity = load_parity_module()
    torch.set_grad_enabled(False)
    weights = parity.reference_weights()
    content = {"weights_checksum": parity.weights_checksum(weights)}
    for name, case in parity.CASES.items():
        video, queries_tyx = parity.CLIPS[case["clip"]]()
        state_dict = weights if case["extra_convs"] else parity.without_extra_convs(weights)
        top = case["refine_resolution"]
        with sampling_fixed_for_non_square_grids(top is not None and top[0] != top[1]):
            outputs = run_official(case, video, queries_tyx, state_dict)
        content.update({f"{name}/{key}": value for key, value in outputs.items()})
        print(f"{name}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]}, {len(queries_tyx)} points")
    path = ROOT / "test" / "data" / "official_reference.npz"
    np.savez_compressed(path, **content)
    print("wrote", path, f"({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
