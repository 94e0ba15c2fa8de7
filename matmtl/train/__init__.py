"""Training: pretraining on DFT data, fine-tuning with an auxiliary DFT anchor, resuming.

``pretrain(PretrainConfig(...))``, ``finetune(FinetuneConfig(...))`` and
``resume(run_dir)``; the settings are in :mod:`matmtl.config`."""

from ..config import FinetuneConfig, MTLConfig, PretrainConfig, TrainConfig
from .engine import Source, TaskData, Trainer
from .finetuning import finetune
from .fit import RunResult
from .pretraining import pretrain
from .resuming import resume

__all__ = [
    "PretrainConfig",
    "FinetuneConfig",
    "MTLConfig",
    "TrainConfig",
    "Source",
    "TaskData",
    "Trainer",
    "RunResult",
    "pretrain",
    "finetune",
    "resume",
]
