"""Continuing an unfinished run from its last saved epoch, with its stored settings."""

from __future__ import annotations

from pathlib import Path

from ..config import FinetuneConfig, PretrainConfig, TrainConfig
from ..errors import MatmtlError
from .fit import RunResult, joined, main_claims, read_config
from .runs import latest_run, open_for_resume


def resume(
    run_dir: str | Path | None = None, *, kind: str | None = None, progress: bool = True, stop_after: int | None = None
) -> RunResult:
    """Continue the unfinished run in ``run_dir`` (default: the latest unfinished run of
    ``kind`` in the user cache). A resumed run repeats an uninterrupted one exactly, also
    with another number of processes (under ``torchrun``; rank 0 takes the folder's lock)."""
    if run_dir is None:
        run_dir = latest_run(kind or "pretrain", complete=False)
        if run_dir is None:
            raise MatmtlError(f"resume: no unfinished {kind or 'pretrain'} run in the user cache; give the run folder")
    world = joined(_stored_train(run_dir))

    def claim():  # refuses a run another process is still training
        return open_for_resume(run_dir, kind)

    with main_claims(world, claim, kind or "run", "opening the run folder to resume it") as run:
        config = read_config(run.path)
        if isinstance(config, PretrainConfig):
            from .pretraining import run_pretrain

            return run_pretrain(run.path, config, progress=progress, stop_after=stop_after, world=world)
        assert isinstance(config, FinetuneConfig)
        from .finetuning import run_finetune

        return run_finetune(run.path, config, progress=progress, stop_after=stop_after, world=world)


def _stored_train(run_dir) -> TrainConfig:
    """The run's stored train settings (its device and collective timeout), or the defaults
    where the folder is no readable run (opening it for the resume then says why)."""
    try:
        return read_config(Path(run_dir).expanduser()).train
    except Exception:
        return TrainConfig()
