"""matmtl: materials-science transfer learning.

Pretrain a multi-task model on DFT data, fine-tune it on scarce experimental band
gaps with the DFT task kept as an anchor, predict from pymatgen objects, and look
inside multi-task training through fast gradient-subspace geometry (Rust core).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("matmtl")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__", "predict", "load_model", "BandGapRegressor"]


def __getattr__(name):  # lazy: `import matmtl` stays fast (no torch/pymatgen until needed)
    if name in ("predict", "load_model"):
        import importlib

        value = getattr(importlib.import_module("matmtl.inference"), name)
        globals()[name] = value
        return value
    if name == "BandGapRegressor":  # the scikit-learn estimator (imports sklearn on first use)
        from .estimator import BandGapRegressor

        globals()[name] = BandGapRegressor
        return BandGapRegressor
    raise AttributeError(f"module 'matmtl' has no attribute {name!r}")
