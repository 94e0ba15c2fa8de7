#!/usr/bin/env python
"""Evaluate matmtl under the Matbench v0.1 protocol (see docs/evaluation.md).

    python scripts/evaluate.py --quick --folds 0            # smoke test, ~1 min
    python scripts/evaluate.py --variants rf_magpie --skip-mp  # the sklearn baseline, a few minutes
    python scripts/evaluate.py                              # everything (hours on a CPU; resumable)
"""
import sys

from matmtl.eval import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], prog="python scripts/evaluate.py"))
