"""Training: pretraining on DFT data, fine-tuning with an auxiliary DFT anchor."""
from .balancing import MTLCombiner, MTLSettings, make_combiner
from .engine import Source, TaskData, TrainConfig, Trainer

__all__ = ["MTLCombiner", "MTLSettings", "make_combiner", "Source", "TaskData", "TrainConfig", "Trainer",
           "pretrain", "finetune"]


def __getattr__(name):
    if name == "pretrain":
        from .pretrain import pretrain

        return pretrain
    if name == "finetune":
        from .finetune import finetune

        return finetune
    raise AttributeError(name)
