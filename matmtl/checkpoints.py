"""Checkpoints: weights in safetensors, everything else in JSON. Nothing is ever
unpickled (no torch.load, no pickle). Every file is written atomically.

A checkpoint is a folder (usually a run folder) holding

* ``model.safetensors``: the model's state dict (float32 tensors),
* ``model.json``: metadata: format version, kind (pretrain/finetune), tasks with
  their normalisation, model config, element vocabulary (atomic numbers seen in
  training), featurizer settings, package versions, a hash of the training data,
  metrics and the training config, the training domain (for trust notes) and two
  SHA-256s: of the weights file, and over the weights and model.json itself.

Loading checks model.json against a schema (types, sizes within sane bounds, finite and
plausible normalisation), compares the shapes the model it describes has (computed from
its settings: :func:`matmtl.models.state_shapes`, nothing built) with the safetensors
header, and checks the hashes, all before any tensor is allocated.
Checkpoints written before the hashes existed still load (the shape check applies).

The resumable training state (``state/`` in a run folder) uses the same two formats:
model + optimizer tensors in safetensors, step counters and the rest in JSON.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .errors import MatmtlError
from .io import _json_default, atomic_write, atomic_write_json, sha256_file, sha256_of

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


def machine() -> dict:
    """What a seeded run's float results depend on besides the packages: the CPU model, the
    SIMD kernels torch picked on it (AVX2, AVX512, ...: another set rounds differently, so
    the same command trains a slightly different model on another CPU) and torch's threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


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


# -- model.json schema: checked before any tensor is allocated ------------------------

#: model_config field -> (type, lowest, highest). Far above any model matmtl trains (the
#: large preset: dim 256, 4 layers), far below what would exhaust a machine's memory.
MODEL_BOUNDS: dict[str, tuple[type, float, float]] = {
    "dim": (int, 1, 4096),
    "layers": (int, 0, 48),
    "heads": (int, 1, 64),
    "ff_mult": (int, 1, 16),
    "dropout": (float, 0.0, 0.999),
    "spg_dim": (int, 1, 1024),
    "head_hidden": (int, 1, 8192),
    "members": (int, 1, 256),
    "n_fourier": (int, 1, 256),
}
MAX_TASKS = 32
MAX_PARAMETERS = 200_000_000  # 800 MB of float32; the default model has ~1.4 M
#: plausible normalisation per unit: |mean| <= bound and 0 < std <= bound
NORM_BOUNDS = {"eV/atom": 5.0, "eV": 50.0}
NORM_BOUND_OTHER = 1e6
_TASK_KINDS = ("regression", "hurdle")
HASH_KEY = "sha256"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def validate_meta(meta: dict, where: str | Path = META) -> None:
    """Check a model.json's content (types, sizes within sane bounds, finite and plausible
    normalisation) without building anything. Raises CheckpointError naming the field."""

    def bad(msg: str):
        raise CheckpointError(f"{where}: {msg}")

    if meta.get("format_version") != FORMAT_VERSION:
        bad(f"checkpoint format {meta.get('format_version')!r}, this matmtl reads {FORMAT_VERSION}")
    _check_model_config(meta.get("model_config"), bad)
    tasks = meta.get("tasks")
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_TASKS:
        bad(f"tasks must be a list of 1..{MAX_TASKS} task objects, got {_short(tasks)}")
    names: set[str] = set()
    for i, t in enumerate(tasks):
        _check_task(i, t, names, bad)
    _check_extras(meta, bad)


def _check_model_config(cfg, bad) -> None:
    if not isinstance(cfg, dict):
        bad(f"model_config must be an object, got {type(cfg).__name__}")
    for name, (typ, lo, hi) in MODEL_BOUNDS.items():
        if name not in cfg:
            continue  # the model's default
        v = cfg[name]
        ok = _is_int(v) if typ is int else _is_num(v)
        if not ok:
            bad(f"model_config.{name} must be {'an integer' if typ is int else 'a number'}, got {v!r}")
        if not lo <= v <= hi:
            bad(f"model_config.{name} = {v!r} is outside the sane range {lo}..{hi}")
    if "embedding" in cfg and not isinstance(cfg["embedding"], str):
        bad(f"model_config.embedding must be a string, got {cfg['embedding']!r}")
    dim, heads = cfg.get("dim", 192), cfg.get("heads", 4)
    if dim % heads:
        bad(f"model_config.dim ({dim}) must be a multiple of model_config.heads ({heads})")


def _check_task(i: int, t, names: set[str], bad) -> None:
    if not isinstance(t, dict):
        bad(f"tasks[{i}] must be an object, got {_short(t)}")
    name = t.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        bad(f"tasks[{i}].name must be a non-empty string, got {_short(name)}")
    if name in names:
        bad(f"task {name!r} appears twice")
    names.add(name)
    unknown = set(t) - _task_fields()
    if unknown:
        bad(f"tasks[{i}] ({name}) has unknown field(s) {sorted(unknown)}")
    for key, v in t.items():  # any other numeric setting (e.g. a hurdle head's metal_cut) must be finite
        if key not in ("name", "kind", "unit", "head") and v is not None and not _is_num(v):
            bad(f"tasks[{i}].{key} ({name}) must be a finite number, got {_short(v)}")
    if t.get("kind", "regression") not in _TASK_KINDS:
        bad(f"tasks[{i}].kind must be one of {_TASK_KINDS}, got {t.get('kind')!r}")
    from .models.net import HEAD_TYPES

    if t.get("head", "mlp") not in HEAD_TYPES:
        bad(f"tasks[{i}].head ({name}) must be one of {HEAD_TYPES}, got {_short(t.get('head'))}")
    unit = t.get("unit", "")
    if not isinstance(unit, str):
        bad(f"tasks[{i}].unit must be a string, got {unit!r}")
    bound = NORM_BOUNDS.get(unit, NORM_BOUND_OTHER)
    mean, std = t.get("mean", 0.0), t.get("std", 1.0)
    if not _is_num(mean) or abs(mean) > bound:
        bad(f"tasks[{i}] ({name}): normalisation mean {mean!r} is not a finite number within ±{bound:g} {unit}")
    if not _is_num(std) or not 0 < std <= bound:
        bad(f"tasks[{i}] ({name}): normalisation std {std!r} is not a finite number in (0, {bound:g}] {unit}")


def _check_extras(meta: dict, bad) -> None:
    """The element vocabulary, featurizer settings, calibrations and training domains."""
    els = meta.get("elements")
    if els is not None and (not isinstance(els, list) or not all(_is_int(z) and 1 <= z <= 118 for z in els)):
        bad("elements must be a list of atomic numbers 1..118")
    fs = meta.get("featurizer")
    if fs is not None:
        if not isinstance(fs, dict):
            bad("featurizer must be an object")
        me, sp = fs.get("max_elements", 10), fs.get("symprec", 0.1)
        if not _is_int(me) or not 1 <= me <= 64:
            bad(f"featurizer.max_elements must be an integer in 1..64, got {me!r}")
        if not _is_num(sp) or not 1e-6 <= sp <= 1.0:
            bad(f"featurizer.symprec must be a number in 1e-6..1, got {sp!r}")
    for task, rec in _object(meta, "uncertainty", bad).items():
        if rec is not None and (
            not isinstance(rec, dict) or not all(_is_num(rec.get(k)) and rec.get(k) >= 0 for k in ("a", "b"))
        ):
            bad(f"uncertainty.{task} must hold finite calibration numbers a, b >= 0")
    domains = _object(meta, "domain", bad)
    if domains:
        from .uncertainty import check_domain

        for task, rec in domains.items():
            problem = check_domain(rec)
            if problem:
                bad(f"domain.{task}: {problem}")


def _object(meta: dict, key: str, bad) -> dict:
    value = meta.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad(f"{key} must be an object")
    return value


def _task_fields() -> set[str]:
    from .models import TaskSpec

    return set(TaskSpec.__dataclass_fields__)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the model in ``meta`` has, computed from its settings
    (:func:`matmtl.models.state_shapes`: nothing is built or allocated). Call after
    :func:`validate_meta`."""
    from .models import ModelConfig, TaskSpec, state_shapes

    cfg = ModelConfig.from_dict(meta["model_config"])
    return state_shapes(cfg, [TaskSpec(**t) for t in meta["tasks"]])


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _canonical(meta: dict, from_json: bool = False) -> str:
    """The JSON text the checkpoint hash covers: ``meta`` less its hash field, normalised
    to plain JSON values (a JSON round trip), keys sorted. ``from_json``: ``meta`` is a
    model.json exactly as ``json`` read it, which that round trip leaves unchanged: skipped."""
    body = {k: v for k, v in meta.items() if k != HASH_KEY}
    if not from_json:
        body = json.loads(json.dumps(body, default=_json_default))
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def checkpoint_digest(meta: dict, weights_sha256: str, from_json: bool = False) -> str:
    """SHA-256 over the weights' hash and the model.json content (less its hash field);
    ``from_json``: see :func:`_canonical`."""
    return sha256_of(weights_sha256, _canonical(meta, from_json))


def save_checkpoint(folder: str | Path, model, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (the JSON last: a folder with a
    JSON file always has matching weights). model.json records the SHA-256 of the
    weights file and one over the weights and the JSON itself (less that field), both
    checked on load: an edited model.json or swapped weights are refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS, model.state_dict())
    full = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": versions(),
        "machine": machine(),
        "model_config": model.cfg.to_dict(),
        "tasks": [t.to_dict() for t in model.tasks.values()],
        **{k: v for k, v in meta.items() if k != HASH_KEY},
    }
    full = json.loads(json.dumps(full, default=_json_default))  # exactly what a reader will see
    write_meta(folder, full)
    try:  # written first: hours of training are never thrown away over a metadata problem
        validate_meta(full, folder / META)
    except CheckpointError as exc:
        import warnings

        warnings.warn(f"saved, but the checkpoint will be refused on load: {exc}", RuntimeWarning, stacklevel=2)
    return folder


def write_meta(folder: str | Path, meta: dict) -> Path:
    """(Re)write a checkpoint's model.json with fresh hashes, for deliberate edits of the
    metadata (e.g. attaching a model card) after :func:`save_checkpoint`."""
    folder = Path(folder)
    weights = sha256_file(folder / WEIGHTS)
    body = {k: v for k, v in meta.items() if k != HASH_KEY}
    body[HASH_KEY] = {
        "weights": weights,
        "checkpoint": checkpoint_digest(body, weights),
        "covers": "checkpoint: model.json without this field + the weights' SHA-256",
    }
    atomic_write_json(folder / META, body)
    return folder / META


def verify_hashes(folder: Path, meta: dict, *, from_json: bool = False) -> bool:
    """Check the stored SHA-256s (True), or return False for a checkpoint saved before
    they existed (its weights are still checked against model.json's shapes on load).
    ``from_json``: ``meta`` is model.json exactly as read (see :func:`_canonical`)."""
    rec = meta.get(HASH_KEY)
    if rec is None:
        return False
    if (
        not isinstance(rec, dict)
        or not isinstance(rec.get("weights"), str)
        or not isinstance(rec.get("checkpoint"), str)
    ):
        raise CheckpointError(f"{folder / META}: malformed {HASH_KEY} record {_short(rec)}")
    weights = sha256_file(folder / WEIGHTS)
    if weights != rec["weights"]:
        raise CheckpointError(
            f"{folder / WEIGHTS}: weights do not match the SHA-256 recorded in {folder / META} "
            "(replaced or damaged after saving)"
        )
    if checkpoint_digest(meta, weights, from_json) != rec["checkpoint"]:
        raise CheckpointError(
            f"{folder / META}: its content does not match the SHA-256 recorded when it was saved "
            "(edited after saving; matmtl.checkpoints.write_meta re-signs a deliberate edit)"
        )
    return True


def resolve(path: str | Path) -> Path:
    """The checkpoint folder for a folder, its model.json or its model.safetensors."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in (WEIGHTS, META):
        return p.parent
    if p.is_dir():
        return p
    raise CheckpointError(f"{p}: no checkpoint there (expected a run folder holding {WEIGHTS} and {META})")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model, meta) from a checkpoint folder. Before any tensor is allocated:
    model.json is checked against its schema (:func:`validate_meta`), the shapes of the
    model it describes (:func:`expected_shapes`) are compared, tensor by tensor, with the
    safetensors header, and the stored SHA-256s are checked. Raises CheckpointError
    naming the file when something is missing, corrupt, implausible or edited."""
    from .models import ModelConfig, MultiTaskModel, TaskSpec

    folder = resolve(path)
    meta = read_json(folder / META)
    validate_meta(meta, folder / META)
    try:
        expected = expected_shapes(meta)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. an unknown embedding name
        raise CheckpointError(f"{folder / META}: cannot describe a model ({exc})") from None
    n_params = sum(math.prod(s) for s in expected.values())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(
            f"{folder / META}: describes a model of {n_params:,} parameters "
            f"(over matmtl's limit of {MAX_PARAMETERS:,}); refused before allocating it"
        )
    found = _file_shapes(folder / WEIGHTS)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        differ = [f"{k} {found[k]} vs {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
        detail = "; ".join(
            x
            for x in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"shapes differ: {', '.join(differ[:3])}" if differ else "",
            )
            if x
        )
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not match {folder / META} ({detail})")
    verify_hashes(folder, meta, from_json=True)
    cfg = ModelConfig.from_dict(meta["model_config"])
    tasks = [TaskSpec(**t) for t in meta["tasks"]]
    state = load_tensors(folder / WEIGHTS)
    try:  # the element table comes with the weights: no data file is read
        model = MultiTaskModel.from_state(cfg, tasks, state)
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
