"""The benchmark scripts run end to end on tiny sizes (their numbers are measured by
running them, never by tests): what they print and write keeps its shape."""

from __future__ import annotations

import json

import pytest
from _scripts import load_script


def test_bench_monitor_runs_every_mode_and_writes_its_json(tmp_path, capsys):
    bench = load_script("bench_monitor")
    out = tmp_path / "monitor.json"
    tiny = ["--steps", "6", "--warmup", "1", "--rounds", "1", "--batch", "16", "--d-in", "8", "--width", "16"]
    assert bench.main([*tiny, "--depth", "1", "--every", "3", "--k", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    modes = {"off", "grads_only", "rust_sync", "rust_bg", "torch_sync"}
    assert modes <= set(res["results"]) and res["results"]["off"]["overhead_vs_off"] == 0.0
    assert all(r["mean_s"] > 0 for r in res["results"].values())
    if bench._has_torchjd():  # the peer's row, when it is installed (pip install torchjd)
        assert "torchjd_grads" in res["results"]
        assert "per-task gradients of the monitored steps: matmtl" in capsys.readouterr().out


def test_bench_monitor_torchjd_row_can_be_left_out(tmp_path):
    bench = load_script("bench_monitor")
    out = tmp_path / "m.json"
    args = ["--steps", "3", "--warmup", "1", "--rounds", "1", "--batch", "8", "--d-in", "4", "--width", "8"]
    args += ["--depth", "1", "--skip", "rust_bg", "torch_sync", "--no-torchjd", "--json", str(out)]
    assert bench.main(args) == 0
    assert "torchjd_grads" not in json.loads(out.read_text())["results"]


@pytest.mark.parametrize("name", ["bench_geometry", "bench_monitor"])
def test_bench_scripts_document_the_torchjd_column(name):
    assert "torchjd" in load_script(name).__doc__
