"""Evaluation under the Matbench v0.1 protocol (issue #6).

``matmtl evaluate`` / ``python scripts/evaluate.py`` / :func:`cli_main` run:

1. matbench_expt_gap on the 5 official folds for the variants ``rf_magpie`` (sklearn
   baseline), ``scratch``, ``finetune``, ``finetune_anchor_replay``,
   ``finetune_anchor_distill`` and ``finetune_anchor_pcgrad``: test MAE mean ± std,
   per-fold MAE, RMSE, R², next to each run's validation MAE and kept epoch (every
   fine-tuning run holds out validation rows from its own training rows; they choose the
   epoch, the metal cut, the calibration and the anchor source; the test fold is
   predicted once);
2. forgetting: e_form MAE on the pretraining run's held-out mp fold before/after fine-tuning;
3. data efficiency at 5/10/25/50/100% of each training fold (table + PNG);
4. matbench mp_e_form / mp_gap MAE of the pretraining model;
5. task relatedness from the gradient-geometry monitor records;

writing ``expt_gap.json``, ``mp_e_form.json``, ``mp_gap.json``, the data-efficiency plot,
the per-fold test predictions ``expt_gap_predictions.json``, the matbench results file
``results.json.gz`` (leaderboard-submission format) and the generated page into
``EvalSettings.out`` (default: a new folder under the matmtl cache; existing results
files are replaced only with ``force``). See docs/evaluation.md.

The pieces: :mod:`.settings` (options, presets), :mod:`.cells` (the resumable cell
cache), :mod:`.claims` (how workers sharing a work dir, e.g. torchrun's ranks, split
the cells), :mod:`.pretrained`, :mod:`.finetune_cells`, :mod:`.baseline`, :mod:`.mp` (the
cells), :mod:`.report` (results JSON and page, pure functions), :mod:`.submission`
(predictions and matbench results file, pure functions), :mod:`.output` (writing
them), :mod:`.runner` (which cells run in which order), :mod:`.cli` (the command).

>>> from matmtl.eval import evaluate
>>> evaluate(variants=("rf_magpie",), skip_mp=True)       # the baseline alone
"""

from .cli import cli_main, evaluate_cmd
from .metrics import aggregate_folds, regression_metrics
from .settings import ALL_VARIANTS, NEURAL_VARIANTS, EvalSettings

__all__ = [
    "ALL_VARIANTS",
    "NEURAL_VARIANTS",
    "EvalSettings",
    "Evaluation",
    "aggregate_folds",
    "cli_main",
    "evaluate",
    "evaluate_cmd",
    "regression_metrics",
]


def __getattr__(name):  # the runner imports the training stack: only when it is used
    if name in ("evaluate", "Evaluation"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
