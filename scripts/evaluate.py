#!/usr/bin/env python
"""Evaluate matmtl under the Matbench v0.1 protocol (see docs/evaluation.md); the same
command as ``matmtl evaluate``. Results go to a new folder in the matmtl cache unless
``--out`` says otherwise, and existing results files are replaced only with ``--force``.

Examples (``python scripts/evaluate.py ...``):

- ``--quick --folds 0``: smoke test, ~1 min
- ``--variants rf_magpie --skip-mp``: the sklearn baseline, a few minutes
- no options: everything (hours on a CPU; resumable)
- ``--out results --markdown docs/results.md --force``: rewrite the committed results
"""

import sys

from matmtl.eval import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], prog="python scripts/evaluate.py"))
