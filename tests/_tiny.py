"""Shared tiny settings for the model/train/predict tests (fast on 2 CPU cores)."""
from matmtl.models import ModelConfig
from matmtl.train.engine import TrainConfig


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig(**{"dim": 32, "layers": 1, "heads": 2, "head_hidden": 32, "members": 2, "spg_dim": 8, **kw})


def tiny_train(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 2e-3, "threads": 1, "val_rows": 128, **kw})


def tiny_ft(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 1e-3, "threads": 1, "val_rows": 128, **kw})
