"""Named, versioned models shipped inside the package (``matmtl/pretrained/<name>/``),
the way CHGNet and matgl ship theirs: ``model.safetensors`` + ``model.json`` (the
checkpoint) and ``card.json`` (what it is: data and rows, the command that made it, the
commit and package version, the 5-fold matbench figures of its recipe, calibration on
its validation rows, licences and citations, and the SHA-256 of its files, checked on
every load).

>>> import matmtl
>>> matmtl.load_model("matmtl-mp-exptgap-v4")   # a shipped model by name
>>> matmtl.zoo.list_models()                    # what is shipped
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import MatmtlError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL = "matmtl-mp-exptgap-v4"
# models no longer shipped (the package holds at most 8 MiB of them): what replaced each, and why
RETIRED = {
    "matmtl-mp-exptgap-v1": (
        "matmtl-mp-exptgap-v4",
        "v1 (static-weight pretraining, replay anchor fixed) was replaced by v2 (uncertainty-balanced "
        "pretraining, the anchor chosen on validation rows), v2 by v3 (the same, pretrained for 75 epochs) "
        "and v3 by v4 (the same weights, with the DFT metal gate on)",
    ),
    "matmtl-mp-exptgap-v2": (
        "matmtl-mp-exptgap-v4",
        "the same data and fine-tuning, pretrained for 75 epochs instead of 25 (0.278 vs 0.285 eV on "
        "matbench_expt_gap over 3 seeds, chosen on validation rows: 0.255 vs 0.259 eV; docs/pretraining_epochs.md), "
        "then with the DFT metal gate on (v4)",
    ),
    "matmtl-mp-exptgap-v3": (
        "matmtl-mp-exptgap-v4",
        "v4 is v3's recipe and weights with the DFT metal gate on: the gate now leaves lanthanide and actinide "
        "compounds and the model's own training compositions alone, and its validation rows chose mode metal "
        "(validation MAE 0.252 vs 0.255 eV; docs/main_job.md)",
    ),
}
CARD_VERSION = 1  # the newest card format this matmtl reads
CHECKED_FILES = ("model.safetensors", "model.json")
OPTIONAL_FILES = ("metal_gate.json.gz",)  # shipped (and checked) when the run made one
_VERIFIED: dict[Path, tuple] = {}  # folder -> file stamps already checked in this process


class ModelNotFound(MatmtlError, FileNotFoundError):
    """No shipped model of that name and no checkpoint at that path."""


def list_models() -> list[dict]:
    """One summary per shipped model: name, version, description, size, data."""
    out = []
    for folder in sorted(p for p in PRETRAINED_DIR.glob("*") if (p / "card.json").is_file()):
        try:
            c = read_card(folder)
        except MatmtlError as exc:  # listed, with why it cannot be used
            out.append(
                {
                    "name": folder.name,
                    "version": None,
                    "description": f"unusable: {exc}",
                    "size_mb": 0.0,
                    "trained_on": "",
                    "path": str(folder),
                }
            )
            continue
        out.append(
            {
                "name": c["name"],
                "version": c.get("version"),
                "description": c.get("description", ""),
                "size_mb": round(sum((folder / f).stat().st_size for f in model_files(folder)) / 2**20, 2),
                "trained_on": c.get("data", {}).get("summary", ""),
                "path": str(folder),
            }
        )
    return out


def shipped(name: str) -> Path | None:
    """The folder of a shipped model, or None (a retired name raises, saying what replaced it)."""
    folder = PRETRAINED_DIR / name
    if not (folder / "card.json").is_file() and name in RETIRED:
        new, why = RETIRED[name]
        raise ModelNotFound(f"{name!r} is no longer shipped: it was replaced by {new!r} ({why}); use {new!r}")
    return folder if (folder / "card.json").is_file() else None


def resolve(name_or_path: str | Path) -> Path:
    """A checkpoint folder from a shipped model's name or a path."""
    folder = shipped(str(name_or_path)) if isinstance(name_or_path, str) and "/" not in name_or_path else None
    if folder is not None:
        verify(folder)
        return folder
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    names = ", ".join(m["name"] for m in list_models()) or "none"
    raise ModelNotFound(
        f"no shipped model named {str(name_or_path)!r} and no checkpoint at that path "
        f"(shipped models: {names}; `matmtl models list`)"
    )


def read_card(folder: str | Path) -> dict:
    folder = Path(folder)
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MatmtlError(f"{folder / 'card.json'}: unreadable model card ({exc})") from None
    version = card.get("card_version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise MatmtlError(
            f"{folder}: model card format {version!r} is newer than this matmtl reads (<= {CARD_VERSION}); "
            f"it was written by matmtl {card.get('package_version', '?')}: upgrade matmtl to use it"
        )
    return card


def card(name: str) -> dict:
    """The card of a shipped model."""
    folder = shipped(name)
    if folder is None:
        raise ModelNotFound(f"no shipped model named {name!r}; shipped: {', '.join(m['name'] for m in list_models())}")
    return read_card(folder)


def model_files(folder: str | Path) -> list[str]:
    """The model's files in ``folder``: the checkpoint, and the optional ones it has."""
    return [*CHECKED_FILES, *(f for f in OPTIONAL_FILES if (Path(folder) / f).is_file())]


def file_digests(folder: str | Path) -> dict[str, str]:
    return {f: hashlib.sha256((Path(folder) / f).read_bytes()).hexdigest() for f in model_files(folder)}


def verify(folder: str | Path) -> None:
    """The shipped files are the ones the card describes (SHA-256; an optional file the
    card lists must be there, one it does not list must not), else a clear error (checked
    once per process for unchanged files)."""
    folder = Path(folder)
    files = model_files(folder)
    stamp = (tuple(files), tuple((folder / f).stat().st_mtime_ns for f in (*files, "card.json")))
    if _VERIFIED.get(folder) == stamp:
        return
    expected = read_card(folder).get("sha256", {})
    got = file_digests(folder)
    missing = [f for f in OPTIONAL_FILES if f in expected and f not in got]
    if missing:
        raise MatmtlError(f"{folder}: {', '.join(missing)} listed in its card.json is missing; reinstall matmtl")
    bad = [f for f in got if expected.get(f) != got[f]]
    if bad:
        raise MatmtlError(
            f"{folder}: {', '.join(bad)} do not match the SHA-256 in its card.json (damaged or edited "
            "model files); reinstall matmtl"
        )
    _VERIFIED[folder] = stamp
