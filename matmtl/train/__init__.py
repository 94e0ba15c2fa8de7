"""Training: pretraining on DFT data, fine-tuning with an auxiliary DFT anchor."""
from .balancing import COMBINERS, CosineMonitor, LossCombiner, StaticWeights, make_combiner, per_task_grads
from .engine import Source, TaskData, TrainConfig, Trainer

__all__ = ["COMBINERS", "CosineMonitor", "LossCombiner", "StaticWeights", "make_combiner", "per_task_grads",
           "Source", "TaskData", "TrainConfig", "Trainer", "pretrain", "finetune"]


def __getattr__(name):
    if name == "pretrain":
        from .pretrain import pretrain

        return pretrain
    if name == "finetune":
        from .finetune import finetune

        return finetune
    raise AttributeError(name)
