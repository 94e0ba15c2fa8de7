"""matmtl's dataset layer: named datasets, user tables, matbench folds, featurization.

>>> from matmtl.data import load_dataset
>>> ds = load_dataset("expt_gap")          # 4,604 experimental band gaps
>>> train, test = ds.folds()[0]            # matbench v0.1 fold 0
>>> feats = ds.features()                  # cached on disk after the first call

The names below are imported on first use: ``import matmtl.data`` (and a formula read by
:mod:`matmtl.data.formula`) imports neither pandas nor pymatgen.
"""

import importlib

# name -> the submodule that defines it
_LAZY = {
    "Dataset": "dataset",
    "load_dataset": "dataset",
    "load_table": "dataset",
    "Features": "featurize",
    "Featurizer": "featurize",
    "symmetry_of": "featurize",
    "MATBENCH_SEED": "folds",
    "matbench_folds": "folds",
    "official_test_ids": "folds",
    "FormulaError": "formula",
    "parse_formula": "formula",
    "REGISTRY": "registry",
    "DatasetSpec": "registry",
    "get_spec": "registry",
    "manifest": "registry",
    "BadRows": "validate",
    "DataWarning": "validate",
    "Duplicates": "validate",
    "check_structure": "validate",
    "merge_duplicates": "validate",
    "parse_composition": "validate",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
