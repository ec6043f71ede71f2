"""Regenerate test/data/official_reference.npz from the official tapnet PyTorch code.

The file holds the official model's outputs (online, as its live demo runs it,
and offline, its forward with refinement_resolutions=[(256, 256)]) for the full
BootsTAPIR architecture with deterministic weights (`reference_weights` in
test/test_official_parity.py), a small non-square clip and points queried on
different frames. The project's test compares its own outputs against them.

Usage (tapnet is not a dependency of this project; put a checkout on the path):
    PYTHONPATH=/path/to/tapnet python tools/make_official_reference.py
"""

import importlib.util
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    from tapnet.torch import tapir_model

    spec = importlib.util.spec_from_file_location("parity", ROOT / "test" / "test_official_parity.py")
    parity = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(parity)
    video, queries_tyx = parity.reference_clip()
    state_dict = parity.reference_weights()
    torch.set_grad_enabled(False)
    frames = torch.from_numpy(video)

    def pre(x):
        return x.float() / 255 * 2 - 1

    causal = tapir_model.TAPIR(pyramid_level=1, use_casual_conv=True).eval()
    causal.load_state_dict(state_dict)
    n, (t_total, height, width) = len(queries_tyx), video.shape[:3]
    features = causal.get_query_features(pre(frames[None, :1]), False, torch.zeros(1, n, 3))
    state = causal.construct_initial_causal_state(n, len(features.resolutions) - 1)
    online = {k: np.full((n, t_total) + s, np.nan, np.float32)
              for k, s in (("tracks", (2,)), ("occlusion", ()), ("expected_dist", ()))}
    for t in range(t_total):
        for i in np.flatnonzero(queries_tyx[:, 0] == t):
            point = torch.tensor([[[0.0, queries_tyx[i, 1], queries_tyx[i, 2]]]])
            new = causal.get_query_features(pre(frames[None, t:t + 1]), False, point)
            features, state = causal.update_query_features(features, new, np.array([i]), state)
        frame = pre(frames[None, t:t + 1])
        out = causal.estimate_trajectories(
            frame.shape[-3:-1], False, causal.get_feature_grids(frame, False), features, None, 64,
            causal_context=state, get_causal_context=True)
        state = out["causal_context"]
        started = queries_tyx[:, 0] <= t
        for key in online:
            online[key][started, t] = out[key][-1][0, started, 0].numpy()

    offline_model = tapir_model.TAPIR(pyramid_level=1, use_casual_conv=False).eval()
    offline_model.load_state_dict(state_dict)
    offline = offline_model(pre(frames[None]), torch.from_numpy(queries_tyx)[None],
                            refinement_resolutions=[(256, 256)])
    np.savez_compressed(
        ROOT / "test" / "data" / "official_reference.npz",
        weights_checksum=parity.weights_checksum(state_dict),
        online_tracks=online["tracks"], online_occlusion=online["occlusion"],
        online_expected_dist=online["expected_dist"],
        offline_tracks=offline["tracks"][0].numpy(), offline_occlusion=offline["occlusion"][0].numpy(),
        offline_expected_dist=offline["expected_dist"][0].numpy(),
    )
    print("wrote", ROOT / "test" / "data" / "official_reference.npz")


if __name__ == "__main__":
    main()
