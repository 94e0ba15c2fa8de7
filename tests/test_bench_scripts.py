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
    modes = {"off", "full_grads", "grads_only", "rust_sync", "rust_bg", "torch_sync"}
    assert modes <= set(res["results"]) and res["results"]["off"]["overhead_vs_off"] == 0.0
    assert all(r["mean_s"] > 0 for r in res["results"].values())
    # each monitored run is also measured against itself: 6 steps, every 3rd monitored
    inside = {m: r for m, r in res["results"].items() if "within_run" in r}
    assert {"full_grads", "grads_only", "rust_sync", "rust_bg", "torch_sync"} <= set(inside)
    assert "off" not in inside  # nothing to compare
    assert all(r["monitored_steps"] == 2 for r in inside.values())
    assert res["results"]["rust_sync"]["angles_share"] > 0 and "angles_share" not in res["results"]["grads_only"]
    # the gradients/angles split is of the within-run figures, not of differences between runs
    split = res["overhead_split"]["rust_sync"]
    assert split["gradients"] == inside["grads_only"]["within_run"]
    assert split["gradients"] + split["angles"] == pytest.approx(inside["rust_sync"]["within_run"])
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


def test_within_run_compares_monitored_steps_with_their_ordinary_neighbours():
    bench = load_script("bench_monitor")
    steps = bench.Steps()
    # every 3rd step costs 2 ordinary steps more, and the step after it 0.5 more
    steps.times = [1.0, 1.0, 3.0, 1.5, 1.0, 3.0, 1.5, 1.0]
    steps.monitored = [False, False, True, False, False, True, False, False]
    steps.submit_seconds = [0.3, 0.3]
    r = bench.within_run("rust_sync", steps, every=3)
    assert r["within_run"] == pytest.approx(2.5 / 3) and r["next_step"] == pytest.approx(0.5 / 3)
    assert r["angles_share"] == pytest.approx(0.1) and r["monitored_steps"] == 2
    assert "angles_share" not in bench.within_run("rust_bg", steps, every=3)  # its angles run elsewhere
    assert bench.within_run("off", steps, every=3) == {}
    steps.monitored = [True] * 8  # no ordinary steps to compare with
    assert bench.within_run("rust_sync", steps, every=1) == {}


def test_bench_geometry_writes_the_floor_rows_and_the_target_ratios(tmp_path):
    bench = load_script("bench_geometry")
    out = tmp_path / "geometry.json"
    args = ["--sizes", "2000,4,2", "--pcgrad", "3000,1,3", "--repeats", "2", "--torch-repeats", "1"]
    assert bench.main([*args, "--scipy-repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    impls = {(r["op"], r["impl"]) for r in res["results"]}
    assert {("angles", "rust"), ("angles", "read_floor_mt"), ("angles", "arith_floor_mt")} <= impls
    assert {("pcgrad", "rust_pcgrad_total_out"), ("pcgrad", "read_floor_2pass_mt")} <= impls
    ratios = res["ratios"]["median"]
    assert "angles_vs_arith_floor_mt (d=2000, k=4, T=2)" in ratios
    assert "pcgrad_total_out_vs_2pass_floor (d=3000, k=1, T=3)" in ratios
    assert all(v > 0 for v in ratios.values())
    assert res["command"].startswith("python scripts/bench_geometry.py --sizes 2000,4,2")


def test_arith_floor_scales_the_measured_product_to_the_grams_multiply_adds():
    bench = load_script("bench_geometry")
    side3 = bench.SGEMM_SIDE**3
    # a Gram with exactly side^3 multiply-adds in its upper triangle takes the product's time
    n, d = 3, side3 // 6
    assert bench.arith_floor_seconds([0.5, 1.0], d, n) == pytest.approx([0.5, 1.0])


def test_bench_geometry_device_rows_run_on_cpu_tensors():
    """The GPU rows' code (bench_device), exercised on CPU tensors: same rows, same ratios."""
    bench = load_script("bench_geometry")
    args = bench.argparse.Namespace(seed=0, repeats=2)
    rows = bench.bench_device("cpu", (2000, 4, 2), (3000, 3), args)
    impls = {(r["op"], r["impl"]) for r in rows}
    assert {("angles_cpu", "matmtl"), ("angles_cpu", "read_floor"), ("pcgrad_cpu", "read_floor_2pass")} <= impls
    assert ("pcgrad_cpu", "matmtl_pcgrad_total_out") in impls and all(r["seconds_median"] > 0 for r in rows)


def test_bench_geometry_cuda_without_a_gpu_says_so(capsys):
    bench = load_script("bench_geometry")
    if bench.torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
