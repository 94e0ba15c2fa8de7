"""One evaluation worker of tests/test_eval_workers.py: ``matmtl evaluate`` (the command,
through :func:`matmtl.eval.cli_main`) with the baseline cells' computation wrapped, so the
test sees who computed which cell and can hold a cell at a known point.

    python tests/_eval_worker_child.py LOG [--block-fold K GO [--fail]] -- EVALUATE-ARGS...

Every baseline cell computed appends "pid fold fraction" to LOG. With ``--block-fold K``
the cell of fold K writes LOG.computing and waits until the file GO exists (at most 120 s),
then computes, or with ``--fail`` raises. Rank and world come from the environment, as
torchrun sets them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    args = sys.argv[1:]
    sep = args.index("--")
    opts, argv = args[:sep], args[sep + 1 :]
    log = Path(opts[0])
    block, go = None, None
    if "--block-fold" in opts:
        i = opts.index("--block-fold")
        block, go = int(opts[i + 1]), Path(opts[i + 2])
    fail = "--fail" in opts

    from matmtl.eval import baseline

    real = baseline.BaselineCells.compute

    def compute(self, fold, fraction):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {fold} {fraction}\n")
        if fold == block:
            Path(f"{log}.computing").write_text(str(os.getpid()))
            deadline = time.time() + 120
            while not go.exists():
                if time.time() > deadline:
                    raise RuntimeError("the test never said go")
                time.sleep(0.05)
            if fail:
                raise RuntimeError("boom (the test's failing cell)")
        return real(self, fold, fraction)

    baseline.BaselineCells.compute = compute
    from matmtl.eval.cli import cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
