"""Evaluation under the Matbench v0.1 protocol (issue #6).

``matmtl evaluate`` / ``python scripts/evaluate.py`` / :func:`cli_main` run:

1. matbench_expt_gap on the 5 official folds for the variants ``rf_magpie`` (sklearn
   baseline), ``scratch``, ``finetune``, ``finetune_anchor_replay``,
   ``finetune_anchor_distill`` and ``finetune_anchor_pcgrad``: MAE mean ± std, per-fold
   MAE, RMSE, R²;
2. forgetting: e_form MAE on the pretraining run's held-out mp fold before/after fine-tuning;
3. data efficiency at 5/10/25/50/100% of each training fold (table + PNG);
4. matbench mp_e_form / mp_gap MAE of the pretraining model;
5. task relatedness from the gradient-geometry monitor records;

writing ``results/expt_gap.json``, ``results/mp_e_form.json``, ``results/mp_gap.json``
and the generated page ``docs/results.md``. See docs/evaluation.md.

>>> from matmtl.eval import evaluate
>>> evaluate(variants=("rf_magpie",), skip_mp=True)       # the baseline alone
"""
from .cli import build_parser, cli_main
from .metrics import aggregate_folds, regression_metrics
from .runner import ALL_VARIANTS, NEURAL_VARIANTS, EvalSettings, Evaluation, evaluate

__all__ = ["cli_main", "build_parser", "evaluate", "EvalSettings", "Evaluation", "ALL_VARIANTS", "NEURAL_VARIANTS",
           "aggregate_folds", "regression_metrics"]
