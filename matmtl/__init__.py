"""matmtl: materials-science transfer learning.

Pretrain a multi-task model on DFT data, fine-tune it on scarce experimental band
gaps with the DFT task kept as an anchor, predict from pymatgen objects, and look
inside multi-task training through fast gradient-subspace geometry (Rust core).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("matmtl")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
