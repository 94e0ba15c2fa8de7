"""Checkpoints: weights in safetensors, everything else in JSON. Nothing is ever
unpickled (no torch.load, no pickle). Every file is written atomically.

A checkpoint is a folder (usually a run folder) holding

* ``model.safetensors``: the model's state dict (float32 tensors),
* ``model.json``: metadata: format version, kind (pretrain/finetune), tasks with
  their normalisation, model config, element vocabulary (atomic numbers seen in
  training), featurizer settings, package versions, a hash of the training data,
  metrics and the training config.

The resumable training state (``state/`` in a run folder) uses the same two formats:
model + optimizer tensors in safetensors, step counters and the rest in JSON.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .errors import MatmtlError
from .io import atomic_write, atomic_write_json

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


class CheckpointError(MatmtlError):
    """A checkpoint (or training state) is missing, incomplete or corrupt; the message names the file."""


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("matmtl", "torch", "pymatgen", "matminer", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, str(tmp)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def save_checkpoint(folder: str | Path, model, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (the JSON last: a folder with a
    JSON file always has matching weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS, model.state_dict())
    full = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": versions(),
        "model_config": model.cfg.to_dict(),
        "tasks": [t.to_dict() for t in model.tasks.values()],
        **meta,
    }
    atomic_write_json(folder / META, full)
    return folder


def resolve(path: str | Path) -> Path:
    """The checkpoint folder for a folder, its model.json or its model.safetensors."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in (WEIGHTS, META):
        return p.parent
    if p.is_dir():
        return p
    raise CheckpointError(f"{p}: no checkpoint there (expected a run folder holding {WEIGHTS} and {META})")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model, meta) from a checkpoint folder. Raises CheckpointError naming the file
    when something is missing or corrupt."""
    from .models import ModelConfig, MultiTaskModel, TaskSpec

    folder = resolve(path)
    meta = read_json(folder / META)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder / META}: checkpoint format {meta.get('format_version')!r}, this matmtl reads {FORMAT_VERSION}")
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
        tasks = [TaskSpec(**t) for t in meta["tasks"]]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / META}: incomplete metadata ({exc})") from None
    model = MultiTaskModel(cfg, tasks)
    state = load_tensors(folder / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not match {folder / META} ({str(exc)[:300]})") from None
    model.to(device).eval()
    return model, meta


# -- resumable optimizer state -------------------------------------------------

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors (safetensors) and JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    for name, val in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
