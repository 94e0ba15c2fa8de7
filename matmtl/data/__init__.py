"""matmtl's dataset layer: named datasets, user tables, matbench folds, featurization.

>>> from matmtl.data import load_dataset
>>> ds = load_dataset("expt_gap")          # 4,604 experimental band gaps
>>> train, test = ds.folds()[0]            # matbench v0.1 fold 0
>>> feats = ds.features()                  # cached on disk after the first call
"""

from .dataset import Dataset, load_dataset, load_table
from .featurize import Features, Featurizer, symmetry_of
from .folds import MATBENCH_SEED, matbench_folds, official_test_ids
from .formula import FormulaError, parse_formula
from .registry import REGISTRY, DatasetSpec, get_spec, manifest
from .validate import BadRows, DataWarning, Duplicates, check_structure, merge_duplicates, parse_composition

__all__ = [
    "Dataset",
    "load_dataset",
    "load_table",
    "Features",
    "Featurizer",
    "symmetry_of",
    "MATBENCH_SEED",
    "matbench_folds",
    "official_test_ids",
    "REGISTRY",
    "DatasetSpec",
    "get_spec",
    "manifest",
    "BadRows",
    "DataWarning",
    "check_structure",
    "parse_composition",
    "parse_formula",
    "FormulaError",
    "Duplicates",
    "merge_duplicates",
]
