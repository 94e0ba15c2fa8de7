"""Shared tiny settings for the model/train/predict tests (fast on 2 CPU cores): the
library's own "tiny" presets, with overrides."""

from matmtl.config import FinetuneConfig, MTLConfig, PretrainConfig, TrainConfig
from matmtl.models import ModelConfig


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny", **kw)


def tiny_train(**kw) -> TrainConfig:
    return TrainConfig.preset("tiny", **kw)


def tiny_ft(**kw) -> TrainConfig:
    return TrainConfig.preset("finetune-tiny", **kw)


def tiny_pretrain(tasks=("e_form",), *, train=None, mtl=None, **kw) -> PretrainConfig:
    """A tiny pretraining config (``kw``: other PretrainConfig fields, e.g. max_rows; fold 0
    held out unless given)."""
    kw.setdefault("holdout_fold", 0)
    return PretrainConfig(
        tasks=tuple(tasks), model=tiny_model(), train=train or tiny_train(), mtl=mtl or MTLConfig(), **kw
    )


def tiny_finetune(checkpoint, *, train=None, mtl=None, **kw) -> FinetuneConfig:
    """A tiny fine-tuning config of ``checkpoint`` (``kw``: other FinetuneConfig fields;
    fold 0 held out unless given)."""
    kw.setdefault("holdout_fold", 0)
    return FinetuneConfig(checkpoint=str(checkpoint), train=train or tiny_ft(), mtl=mtl or MTLConfig(), **kw)
