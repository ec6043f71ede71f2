"""Weight-space interpolation between a model and its fine-tuned version (WiSE-FT).

A model fine-tuned for new cameras forgets part of what it knew. The straight line between
the weights it started from and the weights it ended with often keeps most of both (Wortsman
et al., "Robust fine-tuning of zero-shot models", CVPR 2022): `interpolate` returns
``(1 - weight) * base + weight * tuned`` for every floating-point tensor (integer buffers come
from `tuned`). Both checkpoints must share one architecture, and `tuned` should descend from
`base` by fine-tuning: the weights of two models trained apart do not average into a model.
Choose `weight` on validation clips; docs/default-model.md shows how the default was chosen.

    python -m bootstap_ros_training.average runs/base.pt runs/camera2/final.pt \\
        --weight 0.3 --output runs/average/model.pt
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, Mapping

import torch

from bootstap_ros.cli.common import prepare_output, run_command
from bootstap_ros.model import build_model, load_checkpoint, save_checkpoint

PROG = "python -m bootstap_ros_training.average"


def interpolate(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                weight: float) -> Dict[str, torch.Tensor]:
    """``(1 - weight) * base + weight * tuned`` tensor by tensor, computed in float64 and
    stored in each tensor's own dtype; weight 0 returns `base`'s values, 1 `tuned`'s."""
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    if set(base) != set(tuned):
        different = sorted(set(base) ^ set(tuned))
        raise ValueError(f"the checkpoints hold different tensors ({', '.join(different[:4])}...): "
                         "interpolation needs one architecture")
    mixed = {}
    for name, value in tuned.items():
        other = base[name]
        if other.shape != value.shape:
            raise ValueError(f"tensor {name} has shape {tuple(other.shape)} in the base checkpoint and "
                             f"{tuple(value.shape)} in the tuned one: interpolation needs one architecture")
        if value.is_floating_point():
            mixed[name] = torch.lerp(other.double(), value.double(), weight).to(value.dtype)
        else:
            mixed[name] = value.clone()
    return mixed


def average_checkpoints(base_path: str, tuned_path: str, weight: float, output: str) -> None:
    base, tuned = load_checkpoint(base_path), load_checkpoint(tuned_path)
    if base.config != tuned.config:
        raise ValueError(f"{base_path} and {tuned_path} have different model configurations: "
                         "interpolation needs one architecture")
    state = interpolate(base.model.state_dict(), tuned.model.state_dict(), weight)
    save_checkpoint(output, build_model(tuned.config, state, output),
                    average={"base": str(base_path), "tuned": str(tuned_path), "weight": weight})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write the model (1 - WEIGHT) * BASE + WEIGHT * TUNED (weight-space "
        "interpolation of two checkpoints of one architecture, e.g. a model and its fine-tuned version).")
    parser.add_argument("base", help="the checkpoint the fine-tuning started from")
    parser.add_argument("tuned", help="the fine-tuned checkpoint")
    parser.add_argument("--weight", type=float, required=True,
                        help="share of TUNED in [0, 1]: 0 gives BASE, 1 gives TUNED")
    parser.add_argument("--output", required=True, help="the checkpoint to write")
    args = parser.parse_args(argv)

    def run():
        output = prepare_output(args.output, "--output")
        average_checkpoints(args.base, args.tuned, args.weight, str(output))
        print(f"wrote {output}: {1 - args.weight:g} x {args.base} + {args.weight:g} x {args.tuned}")

    return run_command(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
