"""The training commands' boundary: every option value is checked where it enters, the
error names the flag, no traceback reaches the user, and the defaults shown are the
config dataclasses' own."""

import pytest
from typer.testing import CliRunner

from matmtl.cli import app
from matmtl.config import FinetuneConfig, TrainConfig

runner = CliRunner()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["pretrain", "--epochs", "0"], "--epochs"),
        (["pretrain", "--dim", "0"], "--dim"),
        (["pretrain", "--batch-size", "-5"], "--batch-size"),
        (["pretrain", "--lr", "0"], "--lr"),
        (["pretrain", "--lr", "-1e-3"], "--lr"),
        (["pretrain", "--members", "0"], "--members"),
        (["pretrain", "--sym-dropout", "1.5"], "--sym-dropout"),
        (["pretrain", "--dropout", "0.95"], "--dropout"),
        (["pretrain", "--weight-decay", "-1e-4"], "--weight-decay"),
        (["pretrain", "--tasks", "e_form,magic"], "--tasks"),
        (["pretrain", "--tasks", ","], "--tasks"),
        (["pretrain", "--size", "huge"], "--size"),
        (["pretrain", "--balance", "magic"], "--balance"),
        (["pretrain", "--surgery", "magic"], "--surgery"),
        (["pretrain", "--device", "tpu"], "--device"),
        (["pretrain", "--holdout-fold", "7"], "--holdout-fold"),
        (["pretrain", "--dataset", "oqmd"], "--dataset"),
        (["pretrain", "--monitor-k", "1"], "--monitor-k"),
        (["pretrain", "--monitor-every", "-1"], "--monitor-every"),
        (["pretrain", "--max-rows", "0"], "--max-rows"),
        (["pretrain", "--threads", "-2"], "--threads"),
        (["finetune", "--aux", "dft_magic"], "--aux"),
        (["finetune", "--aux-source", "magic"], "--aux-source"),
        (["finetune", "--aux-weight", "-1"], "--aux-weight"),
        (["finetune", "--soft-share", "-0.1"], "--soft-share"),
        (["finetune", "--gap-head", "delta"], "--gap-head"),
        (["finetune", "--metal-gate", "magic"], "--metal-gate"),
        (["finetune", "--epochs", "0"], "--epochs"),
        (["finetune", "--average-epochs", "0"], "--average-epochs"),
        (["finetune", "--batch-size", "0"], "--batch-size"),
        (["finetune", "--holdout-fold", "x"], "--holdout-fold"),
        (["finetune", "--max-train-rows", "0"], "--max-train-rows"),
        (["predict", "-f", "GaAs", "--on-bad", "foo"], "--on-bad"),
    ],
)
def test_bad_option_values_name_the_flag(args, flag, tmp_path, monkeypatch):
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert flag in r.output and "Traceback" not in r.output
    assert not r.exception or isinstance(r.exception, SystemExit)
    assert not any(tmp_path.iterdir())  # nothing was started


def test_defaults_shown_are_the_configs():
    ft = FinetuneConfig()
    text = runner.invoke(app, ["finetune", "--help"], terminal_width=200).output
    for value in (ft.train.epochs, ft.train.batch_size, ft.train.lr, ft.aux_weight):
        assert str(value) in text
    text = runner.invoke(app, ["pretrain", "--help"], terminal_width=200).output
    for value in (TrainConfig().epochs, TrainConfig.PRESETS["large"]["epochs"], TrainConfig().batch_size):
        assert str(value) in text
    # the pretraining balances its losses by uncertainty unless told otherwise, in the CLI and the
    # config alike; fine-tuning keeps static weights; a run recorded without mtl settings reads as static
    import typer

    from matmtl.config import PRETRAIN_BALANCER, MTLConfig, PretrainConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["pretrain"].params}
    assert PRETRAIN_BALANCER == "uncertainty" and params["balance"].default.value == PRETRAIN_BALANCER
    assert PretrainConfig().mtl.balancer.to_dict()["name"] == PRETRAIN_BALANCER
    assert FinetuneConfig().mtl.balancer.to_dict()["name"] == "static"
    assert MTLConfig.from_dict({}).balancer.to_dict()["name"] == "static"
    # the gap head starts as a copy of the DFT gap head unless told otherwise, in both commands
    for cmd in ("finetune", "evaluate"):
        params = {p.name: p for p in typer.main.get_command(app).commands[cmd].params}
        assert params["gap_head"].default.value == ft.gap_head == "warm_start"
    # fine-tuning gates the metal decision with Materials Project's PBE gap unless told otherwise
    params = {p.name: p for p in typer.main.get_command(app).commands["finetune"].params}
    assert params["metal_gate"].default.value == ft.metal_gate == "mp_pbe"


def test_regularisation_options_reach_the_config(tmp_path, monkeypatch):
    """--dropout and --weight-decay go into the model and training configs; left out,
    the preset's values stay."""
    from types import SimpleNamespace

    import matmtl.train

    seen = []

    def fake_pretrain(config, out, progress=True):
        seen.append(config)
        return SimpleNamespace(run_dir=tmp_path / "run")

    monkeypatch.setattr(matmtl.train, "pretrain", fake_pretrain)
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    r = runner.invoke(app, ["pretrain", "--device", "cpu", "--dropout", "0.1", "--weight-decay", "0.01"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["pretrain", "--device", "cpu", "--size", "tiny"])
    assert r.exit_code == 0, r.output
    given, preset = seen
    assert (given.model.dropout, given.train.weight_decay) == (0.1, 0.01)
    assert given.model.dim == 192 and given.train.lr == TrainConfig().lr  # the rest is the preset's
    assert (preset.model.dropout, preset.train.weight_decay) == (0.0, TrainConfig().weight_decay)


def test_average_epochs_reaches_the_fine_tuning_config(tmp_path, monkeypatch):
    """--average-epochs goes into the fine-tuning TrainConfig; left out, the preset's value."""
    from types import SimpleNamespace

    import matmtl.train

    seen = []

    def fake_finetune(config, out, progress=True):
        seen.append(config)
        return SimpleNamespace(run_dir=tmp_path / "run", metrics={})

    monkeypatch.setattr(matmtl.train, "finetune", fake_finetune)
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    for extra in (["--average-epochs", "5"], []):
        r = runner.invoke(app, ["finetune", "--device", "cpu", "--checkpoint", str(tmp_path), *extra])
        assert r.exit_code == 0 or seen, r.output
    assert [c.train.average_epochs for c in seen] == [5, TrainConfig.preset("finetune").average_epochs]


def test_no_progress_reaches_training_and_resuming(tmp_path, monkeypatch):
    """--no-progress turns the progress bars off in pretrain, finetune and their --resume;
    without it they are on."""
    from types import SimpleNamespace

    import matmtl.train

    seen = []

    def fake(kind):
        def run(*args, progress=True, **kw):
            seen.append((kind, progress))
            return SimpleNamespace(run_dir=tmp_path / "run", metrics={})

        return run

    for name in ("pretrain", "finetune", "resume"):
        monkeypatch.setattr(matmtl.train, name, fake(name))
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    ck = ["--checkpoint", str(tmp_path)]
    for argv in (["pretrain"], ["finetune", *ck], ["pretrain", "--resume"], ["finetune", "--resume", *ck]):
        for flag in (["--no-progress"], []):
            r = runner.invoke(app, [*argv, "--device", "cpu", *flag])
            assert r.exit_code == 0, r.output
    kinds = ["pretrain", "finetune", "resume", "resume"]
    assert seen == [(k, p) for k in kinds for p in (False, True)]


def _interrupt(monkeypatch, tmp_path, after_save: bool):
    from matmtl.train import engine

    real = engine.Trainer.save_state

    def save_then_ctrl_c(self):
        if after_save:
            real(self)
        raise KeyboardInterrupt

    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(engine.Trainer, "save_state", save_then_ctrl_c)
    monkeypatch.setattr(
        "sys.argv", ["matmtl", "pretrain", "--max-rows", "100", "--size", "tiny", "--out", str(tmp_path / "run")]
    )


def test_ctrl_c_says_where_the_state_is_and_how_to_resume(tmp_path, monkeypatch, capsys):
    from matmtl import cli

    _interrupt(monkeypatch, tmp_path, after_save=True)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "(after epoch 1)" in err and f"matmtl pretrain --resume --out {tmp_path / 'run'}" in err
    assert (tmp_path / "run" / "state" / "state.json").is_file()


def test_ctrl_c_before_the_first_saved_epoch_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from matmtl import cli

    _interrupt(monkeypatch, tmp_path, after_save=False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    assert "was removed" in " ".join(capsys.readouterr().err.split()) and not (tmp_path / "run").exists()
