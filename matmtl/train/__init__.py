"""Training: pretraining on DFT data, fine-tuning with an auxiliary DFT anchor, resuming.

``pretrain(PretrainConfig(...))``, ``finetune(FinetuneConfig(...))`` and
``resume(run_dir)``; the settings are in :mod:`matmtl.config`."""

from ..config import FinetuneConfig, MTLConfig, PretrainConfig, TrainConfig

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

_LAZY = {
    "pretrain": "pretraining",
    "finetune": "finetuning",
    "resume": "resuming",
    "RunResult": "fit",
    "Source": "engine",
    "TaskData": "engine",
    "Trainer": "engine",
}


def __getattr__(name):  # lazy: predicting (matmtl.train.runs) does not import the training code
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
