"""Checkpoint loading and saving.

Two formats load the same way:

* the official tapnet PyTorch checkpoints: bare state_dicts with the official key
  names and no configuration. The architecture is recognised from the keys
  (BootsTAPIR has `extra_convs.*`, TAPIR has not); causality cannot be read from
  weights and comes from the caller (the tracking mode or `--causal`).
* the project's own checkpoints: a dict holding the model config beside the
  weights (and, for training checkpoints, the step, optimiser and training
  config). They need no flags.

Everything is read with `torch.load(weights_only=True)`. A wrong, truncated or
foreign file raises `CheckpointError` naming what was expected and what was found.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from bootstap_ros.config import ModelConfig, default_softmax_temperature

#: The embedded default model, installed inside the package (a pip or colcon install carries it).
EMBEDDED_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "default.pt"
#: The checkpoint name that means the embedded model (as do None and "", the node's default).
EMBEDDED_NAME = "embedded"
OFFICIAL_CAUSAL_URL = "https://storage.googleapis.com/dm-tapnet/bootstap/causal_bootstapir_checkpoint.pt"

FORMAT_NAME = "bootstap_ros.checkpoint"
FORMAT_VERSION = 1
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says why and what to do."""


@dataclass
class LoadedCheckpoint:
    model: "torch.nn.Module"
    config: ModelConfig
    source: str  # "official" or "project"
    path: str
    extra: Dict[str, Any] = field(default_factory=dict)  # step, train_config, ...


def _listing(names: List[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def resolve_checkpoint(checkpoint: Optional[Union[str, os.PathLike]]) -> Path:
    """`checkpoint`, or the embedded default model when it is None, "" or "embedded"."""
    if checkpoint and str(checkpoint) != EMBEDDED_NAME:
        return Path(checkpoint).expanduser()
    if not EMBEDDED_CHECKPOINT.is_file():
        raise CheckpointError(
            f"no checkpoint given and the embedded default model is not installed (expected "
            f"{EMBEDDED_CHECKPOINT}); pass a model file, e.g. the official causal BootsTAPIR from "
            f"{OFFICIAL_CAUSAL_URL}")
    return EMBEDDED_CHECKPOINT


def read_checkpoint_file(path: Union[str, os.PathLike]) -> Any:
    """torch.load(weights_only=True) with errors that say what the file is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a .pt file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); download or copy it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here; re-raise one with context
        reason = _load_failure_reason(error)
        raise CheckpointError(
            f"could not read checkpoint {path} ({size} bytes): it is truncated, corrupt or not a "
            f"PyTorch checkpoint saved with plain tensors ({type(error).__name__}: {reason})"
        ) from None


def _load_failure_reason(error: Exception) -> str:
    """torch.load's error without its advice to load with weights_only=False: that runs
    whatever code the file holds, and a file that is not a checkpoint is not worth it."""
    advice = ("weights_only", "Weights only load failed", "file an issue")
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not any(word in line for word in advice)]
    return " ".join(lines) or type(error).__name__


def infer_official_config(state_dict: Mapping[str, Any], causal: bool) -> ModelConfig:
    """The architecture of an official bare state_dict, recognised from its keys."""
    if not any(k.startswith("resnet_torch.") for k in state_dict) or not any(
            k.startswith("torch_pips_mixer.") for k in state_dict):
        found = _listing(sorted(state_dict)[:_MAX_LISTED]) if state_dict else "no keys"
        raise CheckpointError(
            "not a TAPIR/BootsTAPIR checkpoint: expected keys starting with 'resnet_torch.' and "
            f"'torch_pips_mixer.' (the official tapnet layout), found {found}")
    blocks = {int(m.group(1)) for k in state_dict
              for m in [re.match(r"extra_convs\.blocks\.(\d+)\.", k)] if m}
    extra = max(blocks) + 1 if blocks else 0
    # The temperature follows the architecture: BootsTAPIR weights were trained with 10, TAPIR's with 20.
    return ModelConfig(extra_conv_blocks=extra, causal=causal,
                       softmax_temperature=default_softmax_temperature(extra))


def _check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Any], path: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state_dict[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the model architecture "
            f"({len(expected)} tensors expected, {len(state_dict)} found): " + "; ".join(problems))


def build_model(config: ModelConfig, state_dict: Optional[Mapping[str, Any]] = None,
                path: str = "<state_dict>") -> torch.nn.Module:
    """A TAPIR for `config`, with `state_dict` loaded after a full key/shape check."""
    from bootstap_ros.model.tapir import TAPIR

    model = TAPIR(config)
    if state_dict is not None:
        _check_state_dict(model, state_dict, path)
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def with_settings(model: torch.nn.Module, **changes: Any) -> torch.nn.Module:
    """`model` with inference settings of its config changed (e.g. `softmax_temperature`,
    `resolution`); a change of None means "keep". A new `resolution` without a
    `refine_resolution` refines at that one level (the ladder collapses to it). Returns
    `model` itself when nothing changes, else a new model with the same weights: the
    caller's model is never modified."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "resolution" in changes and "refine_resolution" not in changes:
        changes["refine_resolution"] = changes["resolution"]
    config = model.config.replace(**changes) if changes else model.config
    if config == model.config:
        return model
    rebuilt = build_model(config, model.state_dict())
    return rebuilt.to(next(model.parameters()).device).train(model.training)


def load_checkpoint(path: Optional[Union[str, os.PathLike]] = None, causal: Optional[bool] = None,
                    official_default_causal: Optional[bool] = None) -> LoadedCheckpoint:
    """Load an official or project checkpoint.

    path: the checkpoint file; None, "" or "embedded" load the embedded default model
      (`EMBEDDED_CHECKPOINT`), as the command-line tools and the node do without one.
    causal: for official checkpoints, whether to run the model causal (required,
      unless `official_default_causal` gives the default, e.g. from the tracking
      mode); for project checkpoints it overrides the stored value only when
      given (a model trained causal should be run causal).
    """
    path = str(resolve_checkpoint(path))
    content = read_checkpoint_file(path)
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(content).__name__}, expected a state_dict or a "
            f"{FORMAT_NAME} dict")
    if content.get("format") == FORMAT_NAME:
        version = content.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {version}; this bootstap_ros reads version "
                f"{FORMAT_VERSION}")
        for key in ("model_config", "state_dict"):
            if key not in content:
                raise CheckpointError(f"checkpoint {path} lacks '{key}' (a {FORMAT_NAME} needs it)")
        try:
            config = ModelConfig.from_dict(content["model_config"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path} has an invalid model_config: {error}") from None
        if causal is not None and causal != config.causal:
            config = config.replace(causal=causal)
        model = build_model(config, content["state_dict"], path)
        extra = {k: v for k, v in content.items()
                 if k not in ("format", "version", "model_config", "state_dict")}
        return LoadedCheckpoint(model, config, "project", path, extra)
    if not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(
            f"checkpoint {path} is a dict but neither a state_dict of tensors nor a {FORMAT_NAME} "
            f"(top-level keys: {_listing(sorted(map(str, content)))})")
    if causal is None:
        causal = official_default_causal
    if causal is None:
        raise CheckpointError(
            f"checkpoint {path} is an official bare state_dict, whose weights do not say whether "
            "the model is causal: pass --causal (online, e.g. causal_bootstapir_checkpoint.pt) or "
            "--no-causal (offline, e.g. bootstapir_checkpoint_v2.pt)")
    config = infer_official_config(content, causal)
    return LoadedCheckpoint(build_model(config, content, path), config, "official", path)


def save_checkpoint(path: Union[str, os.PathLike], model: torch.nn.Module,
                    **extra: Any) -> None:
    """Write a project checkpoint (config + weights + extra), atomically.

    The file is written next to its destination and renamed into place, so a
    crash never leaves a truncated checkpoint under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    atomic_torch_save(content, path)


def atomic_torch_save(content: Any, path: Union[str, os.PathLike]) -> None:
    """`torch.save(content)` to `path` so that a crash or power loss leaves either the old
    file or the whole new one under that name, never a truncated file.

    The data goes to a uniquely named file beside `path` (so concurrent writers never
    share one), is fsync'd, renamed into place, and the folder is fsync'd so the rename
    itself is on disk. The file is created with mode 0o666 and the kernel applies the
    process's umask: no process-wide umask change (which would race other threads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform without directory descriptors
    try:
        os.fsync(directory)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(directory)
