"""Named model architectures for training (`--model NAME`).

`small` is the architecture of the embedded default model (bootstap_ros/data/default.pt):
about 1.1 M parameters, small enough to learn on Kubric-lite clips in a few CPU hours
and to track online on a CPU. `official` and `tapir` are the published architectures.
"""

from __future__ import annotations

import json
from pathlib import Path

from bootstap_ros.config import ModelConfig, bootstapir_config, tapir_config

SMALL = ModelConfig(
    backbone_channels=(32, 64, 96, 128),
    backbone_blocks=(1, 1, 1, 1),
    stem_channels=32,
    extra_conv_blocks=0,
    mixer_hidden_dim=128,
    mixer_blocks=4,
    refinement_iters=3,
    resolution=(256, 256),
)

MODEL_CONFIGS = {
    "small": SMALL,
    "official": bootstapir_config(),
    "bootstapir": bootstapir_config(),
    "tapir": tapir_config(),
}


def resolve_model_config(spec: str, causal: bool) -> ModelConfig:
    """A ModelConfig from a name above, an inline JSON object or a .json file path."""
    if spec in MODEL_CONFIGS:
        config = MODEL_CONFIGS[spec]
    elif spec.lstrip().startswith("{"):
        config = ModelConfig.from_dict(json.loads(spec))
    elif Path(spec).is_file():
        config = ModelConfig.from_dict(json.loads(Path(spec).read_text()))
    else:
        raise ValueError(f"unknown model {spec!r}: expected one of {sorted(MODEL_CONFIGS)}, "
                         "a JSON object of ModelConfig fields or the path of a .json file holding one")
    return config.replace(causal=causal)
