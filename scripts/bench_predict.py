"""Prediction throughput: structures (symmetry analysis included) and formulas per second.

Runs, in one process on the same Materials Project crystals (the CGCNN set in the
offline mirror):
  symmetry_spglib : space group by spglib through pymatgen's SpacegroupAnalyzer;
  symmetry_moyopy : space group by moyopy, what matmtl uses (same numbers, checked here);
  predict_structures : Model.predict on the pymatgen Structures, end to end;
  predict_formulas   : Model.predict on their formula strings.
Prints items per second (median of --repeats) and the moyopy/spglib ratio; --json writes them.

    python scripts/bench_predict.py [--model RUN_DIR] [--n 2000] [--json results/bench_predict.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings

import numpy as np


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="run folder (default: the latest fine-tuned run in the cache)")
    ap.add_argument("--n", type=int, default=2000, help="crystals (the first n of mp_cgcnn)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from pymatgen.core import Structure

    import matmtl
    from matmtl.data import load_dataset
    from matmtl.data.featurize import _spglib_symmetry, symmetry_of

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's notes on the CIFs it reads
        cifs = load_dataset("mp_cgcnn").frame["cif"].iloc[: args.n]
        structures = [Structure.from_str(c, fmt="cif") for c in cifs]
    formulas = [s.composition.reduced_formula for s in structures]
    model = matmtl.load_model(args.model)
    model.predict(structures[:16], on_bad="nan")  # warm-up

    sub = structures[: min(len(structures), 500)]  # spglib is slow; a subset is enough for its rate
    same = sum(symmetry_of(s) == _spglib_symmetry(s, 0.1) for s in sub)
    rows = {
        "symmetry_spglib": (len(sub), timed(lambda: [_spglib_symmetry(s, 0.1) for s in sub], args.repeats)),
        "symmetry_moyopy": (len(sub), timed(lambda: [symmetry_of(s) for s in sub], args.repeats)),
        "predict_structures": (len(structures), timed(lambda: model.predict(structures, on_bad="nan"), args.repeats)),
        "predict_formulas": (len(formulas), timed(lambda: model.predict(formulas, on_bad="nan"), args.repeats)),
    }
    results = {k: {"items": n, "seconds_median": s, "per_second": n / s} for k, (n, s) in rows.items()}
    ratio = results["symmetry_moyopy"]["per_second"] / results["symmetry_spglib"]["per_second"]
    print(
        f"{len(structures)} MP crystals (mean {np.mean([len(s) for s in structures]):.1f} sites), model {model.path}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'what':<22}{'items':>8}{'per second':>14}")
    for k, r in results.items():
        print(f"{k:<22}{r['items']:>8}{r['per_second']:>14,.0f}")
    print(f"moyopy / spglib symmetry speed: {ratio:.1f}x; same space group on {same}/{len(sub)} crystals")
    if args.json:
        from matmtl.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "results": results,
                "moyopy_over_spglib": ratio,
                "same_space_group": [same, len(sub)],
                "model": str(model.path),
                "args": vars(args),
                "command": "python " + " ".join(["scripts/bench_predict.py", *(argv or sys.argv[1:])]),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "cpus": torch.get_num_threads(),
                    "torch": torch.__version__,
                },
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
