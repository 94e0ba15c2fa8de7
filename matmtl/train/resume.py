"""Continuing an unfinished run from its last saved epoch, with its stored settings."""
from __future__ import annotations

from pathlib import Path

from ..config import FinetuneConfig, PretrainConfig
from ..errors import MatmtlError
from .fit import RunResult, read_config
from .runs import latest_run


def resume(run_dir: str | Path | None = None, *, kind: str | None = None, progress: bool = True,
           stop_after: int | None = None) -> RunResult:
    """Continue the unfinished run in ``run_dir`` (default: the latest unfinished run of
    ``kind`` in the user cache). A resumed run repeats an uninterrupted one exactly."""
    run_dir = find_resumable(run_dir, kind)
    config = read_config(run_dir)
    if kind is not None and config.kind != kind:
        raise MatmtlError(f"resume: {run_dir} is a {config.kind} run, not a {kind} run")
    if isinstance(config, PretrainConfig):
        from .pretrain import run_pretrain

        return run_pretrain(run_dir, config, progress=progress, stop_after=stop_after)
    assert isinstance(config, FinetuneConfig)
    from .finetune import run_finetune

    return run_finetune(run_dir, config, progress=progress, stop_after=stop_after)


def find_resumable(run_dir: str | Path | None, kind: str | None = None) -> Path:
    """The run folder to resume: the one given, else the latest unfinished one of ``kind``."""
    if run_dir is None:
        found = latest_run(kind or "pretrain", complete=False)
        if found is None:
            raise MatmtlError(f"resume: no unfinished {kind or 'pretrain'} run in the user cache; give the run folder")
        run_dir = found
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "config.json").exists():
        raise MatmtlError(f"resume: {run_dir} is not a run folder (no config.json)")
    if (run_dir / "model.json").exists():
        raise MatmtlError(f"resume: {run_dir} already finished (model.json is there); nothing to resume")
    return run_dir
