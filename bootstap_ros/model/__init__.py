"""The TAPIR / BootsTAPIR network (PyTorch) and its checkpoints."""

from bootstap_ros.model.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from bootstap_ros.model.tapir import (
    TAPIR,
    CausalState,
    FeatureGrids,
    QueryFeatures,
    Trajectories,
    preprocess_frames,
    resize_video,
    visibility,
)

__all__ = [
    "TAPIR", "CausalState", "FeatureGrids", "QueryFeatures", "Trajectories",
    "preprocess_frames", "resize_video", "visibility",
    "CheckpointError", "LoadedCheckpoint", "build_model", "load_checkpoint", "save_checkpoint",
]
