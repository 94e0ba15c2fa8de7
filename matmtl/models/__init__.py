"""Models: the shared composition/symmetry encoder and the multi-task heads."""

from .elements import CRYSTAL_SYSTEMS, MAX_Z, crystal_system_of_spg, element_table
from .net import CorrectionHead, Encoder, Head, ModelConfig, MultiTaskModel, TaskSpec, state_shapes

__all__ = [
    "CRYSTAL_SYSTEMS",
    "MAX_Z",
    "crystal_system_of_spg",
    "element_table",
    "CorrectionHead",
    "Encoder",
    "Head",
    "ModelConfig",
    "MultiTaskModel",
    "TaskSpec",
    "state_shapes",
]
