"""Where `matmtl evaluate` writes: --out (default: a new folder in the matmtl cache, never
the repository's results/ or docs/results.md), and existing results files are replaced
only with --force (issue #12)."""

import json
import os
from pathlib import Path

import pytest

from matmtl.errors import MatmtlError
from matmtl.eval import EvalSettings, cli_main, evaluate
from matmtl.eval.output import RESULT_FILES, planned_outputs

SENTINEL = {"protocol": "matbench_v0.1", "quick": False, "committed": True}
QUICK_BASELINE = [
    "--quick",
    "--variants",
    "rf_magpie",
    "--skip-mp",
    "--folds",
    "0",
    "--fractions",
    "none",
    "--no-progress",
]


def _committed(root):
    (root / "results").mkdir()
    (root / "docs").mkdir()
    (root / "results" / "expt_gap.json").write_text(json.dumps(SENTINEL))
    (root / "docs" / "results.md").write_text("# the committed page\n")


def _unchanged(root) -> bool:
    return (
        json.loads((root / "results" / "expt_gap.json").read_text()) == SENTINEL
        and (root / "docs" / "results.md").read_text() == "# the committed page\n"
    )


def test_quick_run_writes_to_the_cache_and_refuses_to_replace_results_without_force(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    _committed(repo)
    monkeypatch.chdir(repo)  # run from a repository root, as in issue #12
    work = ["--work-dir", str(tmp_path / "work")]
    # no --out: a new folder in the matmtl cache; the repository is not touched
    assert cli_main(QUICK_BASELINE + work) == 0
    assert _unchanged(repo) and sorted(os.listdir(repo)) == ["docs", "results"]
    made = list(Path(os.environ["MATMTL_CACHE_DIR"]).glob("eval/results-*/expt_gap.json"))
    assert len(made) == 1 and (made[0].parent / "results.md").is_file()
    assert json.loads(made[0].read_text())["variants"]["rf_magpie"]["status"] == "done"
    assert str(made[0].parent) in capsys.readouterr().out
    # --out results --markdown docs/results.md would replace the committed files: refused, nothing computed
    cells = sorted((tmp_path / "work" / "cells").rglob("*.json"))
    target = ["--out", "results", "--markdown", "docs/results.md"]
    assert cli_main(QUICK_BASELINE + work + target) == 1
    err = capsys.readouterr().err
    assert "results/expt_gap.json" in err and "docs/results.md" in err and "--force" in err
    assert _unchanged(repo) and sorted((tmp_path / "work" / "cells").rglob("*.json")) == cells
    # with --force it writes (from the cached cell)
    assert cli_main(QUICK_BASELINE + work + target + ["--force"]) == 0
    res = json.loads((repo / "results" / "expt_gap.json").read_text())
    assert res["quick"] is True and res["variants"]["rf_magpie"]["status"] == "done"
    assert "--force" in res["command"] and "--out results" in res["command"]
    assert "Quick smoke-test settings" in (repo / "docs" / "results.md").read_text()


def test_the_library_refuses_existing_results_too(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "mp_gap.json").write_text("{}")
    s = EvalSettings(variants=("rf_magpie",), skip_mp=True, quick=True, out=str(out), work_dir=str(tmp_path / "w"))
    with pytest.raises(MatmtlError, match=r"mp_gap\.json.*EvalSettings\.force") as info:
        evaluate(s)
    assert "--force" not in str(info.value)  # the library names its parameter, the CLI its flag
    assert not (tmp_path / "w").exists()  # refused before any work
    assert (out / "mp_gap.json").read_text() == "{}"


def test_planned_outputs():
    assert planned_outputs(EvalSettings()) is None  # default: a new cache folder, made when the run starts
    o = planned_outputs(EvalSettings(out="r"))
    assert [p.name for p in o.files()] == [*RESULT_FILES, "results.md"] and o.page.parent.name == "r"
    assert planned_outputs(EvalSettings(out="r", page=False)).page is None
    assert str(planned_outputs(EvalSettings(out="r", markdown="docs/x.md")).page) == "docs/x.md"
