"""The settings of a training run, one typed object end to end.

A setting travels CLI -> one config object -> the component that uses it:

* :class:`PretrainConfig` / :class:`FinetuneConfig`: what a run does (data, tasks,
  anchor), holding
* :class:`~matmtl.models.ModelConfig` (the network), :class:`TrainConfig` (the optimiser
  loop) and :class:`MTLConfig` (the multi-task strategies: a balancer and a surgery
  object from :mod:`matmtl.mtl`, L2-SP soft sharing, the geometry monitor).

A run writes its config to ``config.json`` (:meth:`RunConfig.to_dict`) and reads it back
typed (:func:`config_from_dict`), also from run folders written by older versions.
Presets (``ModelConfig.preset``, ``TrainConfig.preset``) live here and in
:mod:`matmtl.models.net`, nowhere else. Library errors name the parameter
(``TrainConfig.epochs``); the command line names its flags.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING

from .errors import ConfigError
from .presets import from_preset

if TYPE_CHECKING:
    from .mtl.balance import Balancer
    from .mtl.surgery import Surgery

# Importing this module does not import torch: the command line reads its defaults here.

CONFIG_VERSION = 2

# The DFT tasks a model can pretrain on (name -> dataset, target column) and the
# auxiliary-task names the fine-tuning anchor accepts.
DFT_TASKS = {"e_form": ("mp", "e_form"), "gap_pbe": ("mp_gap", "gap_pbe"), "gap_oqmd": ("oqmd_gap", "gap_oqmd")}
AUX_ALIASES = {"dft_energy": "e_form", "dft_gap": "gap_pbe", "e_form": "e_form", "gap_pbe": "gap_pbe"}
AUX_SOURCES = ("replay", "distill")
# the pretraining's loss balancer unless told otherwise: uncertainty weighting transferred
# best to experimental gaps on validation rows (docs/seeds.md) and removes the e_form cost of
# 2-task pretraining (docs/pretraining.md)
PRETRAIN_BALANCER = "uncertainty"
SYMMETRY_SOURCES = ("none", "mp_ground_state")
# how the experimental-gap head starts: "warm_start" = a trainable copy of the DFT gap head;
# "correction" = the frozen DFT gap head plus a learned correction (Δ-learning)
GAP_HEADS = ("warm_start", "correction")
GAP_HEAD_HELP = (
    "How the experimental-gap head starts: warm_start (a trainable copy of the DFT gap head) or "
    "correction (the frozen DFT gap head plus a learned correction: Δ-learning)."
)
# "mp_pbe": after fine-tuning, the gap's metal decision is checked against Materials
# Project's PBE gap of the composition (matmtl.metal_gate; its mode chosen on validation
# rows, "off" among them); "none": no gate
METAL_GATES = ("mp_pbe", "none")
METAL_GATE_HELP = (
    "mp_pbe: check the gap's metal decision against Materials Project's PBE gap of the composition's "
    "ground state (or of the given structure's polymorph); the run's validation rows choose whether and "
    "how (off, metal, both). none: the model's gap as it is."
)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")

# the same choices as enums, for the command lines (matmtl.cli, matmtl.eval.cli)
Device = Enum("Device", {d: d for d in DEVICES}, type=str)
Precision = Enum("Precision", {p: p for p in PRECISIONS}, type=str)
SymmetrySource = Enum("SymmetrySource", {v: v for v in SYMMETRY_SOURCES}, type=str)
GapHead = Enum("GapHead", {v: v for v in GAP_HEADS}, type=str)
MetalGateSource = Enum("MetalGateSource", {v: v for v in METAL_GATES}, type=str)


def _check(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"{where} {what}, got {value!r}")


@dataclass
class ModelConfig:
    """The network: a set encoder of width ``dim`` with ``layers`` self-attention layers of
    ``heads`` heads over the elements, and task heads of ``members`` ensemble members."""

    dim: int = 192
    layers: int = 3
    heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0
    spg_dim: int = 32
    head_hidden: int = 128
    members: int = 4  # ensemble members per task head (uncertainty)
    embedding: str = "matscholar_els"
    n_fourier: int = 8

    # name -> overrides of the defaults above (the CPU default); "small" is the old name of "default"
    PRESETS = {
        "tiny": dict(dim=32, layers=1, heads=2, head_hidden=32, members=2, spg_dim=8),
        "small": {},
        "default": {},
        "large": dict(dim=256, layers=4),
    }

    def __post_init__(self) -> None:
        c = "ModelConfig"
        for name in ("dim", "layers", "heads", "ff_mult", "spg_dim", "head_hidden", "members", "n_fourier"):
            low = 0 if name == "layers" else 1
            _check(
                _is_int(getattr(self, name), low), f"{c}.{name}", f"must be an integer >= {low}", getattr(self, name)
            )
        _check(self.dim % self.heads == 0, f"{c}.dim", f"must be a multiple of {c}.heads ({self.heads})", self.dim)
        _check(_is_number(self.dropout) and 0 <= self.dropout < 1, f"{c}.dropout", "must be in [0, 1)", self.dropout)

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "ModelConfig":
        """A named size (``tiny``, ``default`` = ``small``, ``large``) with ``overrides`` on top."""
        return from_preset(cls, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**_known(cls, d, "model"))


@dataclass
class TrainConfig:
    """The optimisation loop: AdamW, linear warm-up then cosine decay of the learning rate."""

    epochs: int = 25
    batch_size: int = 256
    lr: float = 1.5e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of steps
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    sym_dropout: float = 0.25  # share of rows trained with the "unknown symmetry" token
    grad_clip: float = 1.0
    val_fraction: float = 0.1  # share of the training rows held out (seeded) as the run's validation rows
    val_rows: int = 4096  # at most this many validation rows are scored after every epoch (all at the end)
    patience: int = 0  # stop after this many epochs without a better validation score (0 = run all epochs)
    # > 1: the weights of this many best epochs (validation score) are kept, and the kept model is
    # their greedy weight average (each next-best epoch joins if the average scores no worse on the
    # validation rows); 1 = the best epoch alone
    average_epochs: int = 1
    # the seed of the row split (the validation rows, and a subsample of the training rows);
    # None: ``seed``. Runs that differ only in ``seed`` then share their validation rows
    split_seed: int | None = None
    # several processes (torchrun): seconds a process waits for the others in a collective before
    # it fails with an error naming itself (rank 0 alone scores validation rows and saves meanwhile)
    dist_timeout: float = 1800.0
    # "bf16": the encoder and heads run under torch.autocast(bfloat16) (CPU or CUDA); losses, the
    # per-task gradients and the optimiser stay fp32. "fp32": no autocast (the default, bit for bit)
    precision: str = "fp32"
    # CUDA: deterministic kernels only (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG,
    # cuDNN flags), slower; a seeded CPU run repeats bit for bit without it
    deterministic: bool = False

    # name -> overrides of the defaults above; "finetune*" presets are the fine-tuning ones
    PRESETS = {
        "tiny": dict(epochs=2, batch_size=64, lr=2e-3, threads=1, val_rows=128),
        "default": {},
        "large": dict(epochs=100, batch_size=1024, lr=2e-3),
        "finetune": dict(epochs=60, batch_size=64, lr=5e-4),
        "finetune-tiny": dict(epochs=2, batch_size=32, lr=1e-3, threads=1, val_rows=128),
    }

    def __post_init__(self) -> None:
        c = "TrainConfig"
        for name, low in (
            ("epochs", 1),
            ("batch_size", 1),
            ("seed", 0),
            ("threads", 0),
            ("val_rows", 1),
            ("patience", 0),
            ("average_epochs", 1),
        ):
            _check(
                _is_int(getattr(self, name), low), f"{c}.{name}", f"must be an integer >= {low}", getattr(self, name)
            )
        for name, ok, what in (
            ("lr", lambda v: v > 0, "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("warmup", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("sym_dropout", lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("grad_clip", lambda v: v >= 0, ">= 0 (0 = off)"),
            ("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("dist_timeout", lambda v: v > 0, "> 0 (seconds)"),
        ):
            v = getattr(self, name)
            _check(_is_number(v) and ok(v), f"{c}.{name}", f"must be a number {what}", v)
        _check(self.device in DEVICES, f"{c}.device", f"must be one of {', '.join(DEVICES)}", self.device)
        _check(
            self.precision in PRECISIONS, f"{c}.precision", f"must be one of {', '.join(PRECISIONS)}", self.precision
        )
        _check(isinstance(self.deterministic, bool), f"{c}.deterministic", "must be true or false", self.deterministic)
        _check(
            self.split_seed is None or _is_int(self.split_seed, 0),
            f"{c}.split_seed",
            "must be an integer >= 0 or null (= seed)",
            self.split_seed,
        )

    @property
    def row_seed(self) -> int:
        """The seed of the row split: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "TrainConfig":
        """A named preset (``tiny``, ``default``, ``large``, ``finetune``, ``finetune-tiny``)
        with ``overrides`` on top."""
        return from_preset(cls, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    #: fields that cannot change a run's numbers (left out of evaluation fingerprints)
    NON_NUMERIC = ("dist_timeout",)
    #: fields added after evaluation cells were first cached: left out of fingerprints at their
    #: default (which is how every earlier run trained), so earlier cells and runs stay valid
    OMITTED_AT_DEFAULT = {"precision": "fp32", "deterministic": False, "average_epochs": 1, "split_seed": None}

    def numeric_dict(self) -> dict:
        """:meth:`to_dict` without the fields that cannot change a run's numbers (and
        without the fields of ``OMITTED_AT_DEFAULT`` at their defaults)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in self.NON_NUMERIC and not (k in self.OMITTED_AT_DEFAULT and v == self.OMITTED_AT_DEFAULT[k])
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**_known(cls, d, "train"))


@dataclass
class MTLConfig:
    """How per-task losses become one update: a balancer and a surgery strategy object
    (see :mod:`matmtl.mtl`), L2-SP soft sharing towards the pretrained encoder, and the
    gradient-geometry monitor (every ``monitor_every`` steps over ``monitor_k``
    micro-batches; 0 = off)."""

    balancer: "Balancer | str | dict | None" = None  # None: Static()
    surgery: "Surgery | str | dict | None" = None  # None: Sum()
    soft_share: float = 0.0
    monitor_every: int = 0
    monitor_k: int = 4

    def __post_init__(self) -> None:
        from .mtl.balance import balancer_from  # (torch: only when a config is made)
        from .mtl.surgery import surgery_from

        try:
            self.balancer = balancer_from(self.balancer)
            self.surgery = surgery_from(self.surgery)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"MTLConfig: {exc}") from None
        _check(
            _is_number(self.soft_share) and self.soft_share >= 0,
            "MTLConfig.soft_share",
            "must be a number >= 0",
            self.soft_share,
        )
        _check(_is_int(self.monitor_every, 0), "MTLConfig.monitor_every", "must be an integer >= 0", self.monitor_every)
        _check(_is_int(self.monitor_k, 2), "MTLConfig.monitor_k", "must be an integer >= 2", self.monitor_k)

    def to_dict(self) -> dict:
        return {
            "balancer": self.balancer.to_dict(),
            "surgery": self.surgery.to_dict(),
            "soft_share": self.soft_share,
            "monitor_every": self.monitor_every,
            "monitor_k": self.monitor_k,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MTLConfig":
        d = dict(d)
        if "balance" in d:  # version 1: {"balance": "gradnorm", "surgery": "pcgrad", ...}
            d["balancer"] = d.pop("balance")
        return cls(**_known(cls, d, "mtl"))

    def fresh(self) -> "MTLConfig":
        """A copy whose strategy objects carry no learned state (one per run)."""
        return copy.deepcopy(self)


@dataclass
class PretrainConfig:
    """Pretraining on DFT data: ``tasks`` (e_form, the formation energy from mp_e_form,
    and gap_pbe, the PBE gap from mp_gap, each row training only its own head; the pair is
    the transfer model that evaluated best; either alone is the single-task baseline of the
    negative-transfer check). The main task (:attr:`main_task`: e_form when trained, else
    the first) chooses the kept epoch; matbench fold ``holdout_fold`` of each dataset is
    held out as test rows (None: every row but the validation rows trains). The losses
    are balanced by uncertainty weighting (``PRETRAIN_BALANCER``) unless ``mtl`` says
    otherwise."""

    tasks: tuple[str, ...] = ("e_form", "gap_pbe")
    dataset: str = "mp"
    holdout_fold: int | None = None
    max_rows: int | None = None
    task_weights: dict = field(default_factory=dict)
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mtl: MTLConfig = field(default_factory=lambda: MTLConfig(balancer=PRETRAIN_BALANCER))

    kind = "pretrain"

    @property
    def main_task(self) -> str:
        """The task whose validation MAE chooses the kept epoch: e_form when trained."""
        return "e_form" if "e_form" in self.tasks else self.tasks[0]

    def __post_init__(self) -> None:
        c = "PretrainConfig"
        self.tasks = tuple(self.tasks)
        _check(
            bool(self.tasks) and all(t in DFT_TASKS for t in self.tasks),
            f"{c}.tasks",
            f"must be DFT tasks among {', '.join(DFT_TASKS)}",
            list(self.tasks),
        )
        _check(len(set(self.tasks)) == len(self.tasks), f"{c}.tasks", "must not repeat a task", list(self.tasks))
        _check(
            self.dataset == "mp",
            f"{c}.dataset",
            "must be 'mp' (matbench mp_e_form, the main task's data)",
            self.dataset,
        )
        _check_fold(self.holdout_fold, f"{c}.holdout_fold")
        _check_rows(self.max_rows, f"{c}.max_rows")
        unknown = set(self.task_weights) - set(self.tasks)
        _check(
            not unknown, f"{c}.task_weights", f"names tasks that are not trained ({sorted(unknown)})", self.task_weights
        )
        _check_types(self)
        _check(
            self.mtl.soft_share == 0,
            f"{c}.mtl.soft_share",
            "pulls the encoder towards pretrained weights: use it when fine-tuning, not pretraining",
            self.mtl.soft_share,
        )

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained ``checkpoint`` on experimental band gaps (``dataset``:
    expt_gap or a table path, ``target`` its gap column), with the DFT task(s) ``aux``
    kept as an anchor loss of weight ``aux_weight``: ``aux_source="replay"`` replays the
    original DFT rows, ``"distill"`` uses the pretrained model's own predictions."""

    checkpoint: str | None = None  # None: the latest finished pretraining run in the user cache
    dataset: str = "expt_gap"
    target: str | None = None
    aux: tuple[str, ...] = ("e_form",)
    aux_source: str = "replay"
    aux_weight: float = 0.5
    holdout_fold: int | None = None
    max_train_rows: int | None = None
    replay_max_rows: int | None = None
    # "mp_ground_state" (the evaluated recipe): each training composition that Materials
    # Project knows carries its ground state's space group, so a structure's real symmetry
    # is no stranger to the gap head; "none": compositions only
    symmetry: str = "mp_ground_state"
    # "warm_start": the experimental-gap head starts as a trainable copy of the DFT gap head;
    # "correction": it is the frozen DFT gap head plus a learned correction (Δ-learning)
    gap_head: str = "warm_start"
    # "mp_pbe": the DFT metal gate (matmtl.metal_gate), fitted on the run's own rows; "none"
    metal_gate: str = "mp_pbe"
    data_dir: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig.preset("finetune"))
    mtl: MTLConfig = field(default_factory=MTLConfig)

    kind = "finetune"

    def __post_init__(self) -> None:
        c = "FinetuneConfig"
        aux = [self.aux] if isinstance(self.aux, str) else list(self.aux or ())
        bad = [a for a in aux if a not in AUX_ALIASES]
        _check(not bad, f"{c}.aux", f"has unknown task(s) {bad}; choose from dft_energy, dft_gap", list(aux))
        self.aux = tuple(dict.fromkeys(AUX_ALIASES[a] for a in aux))
        _check(
            self.aux_source in AUX_SOURCES,
            f"{c}.aux_source",
            f"must be one of {', '.join(AUX_SOURCES)}",
            self.aux_source,
        )
        _check(
            _is_number(self.aux_weight) and self.aux_weight >= 0,
            f"{c}.aux_weight",
            "must be a number >= 0",
            self.aux_weight,
        )
        _check(
            self.symmetry in SYMMETRY_SOURCES,
            f"{c}.symmetry",
            f"must be one of {', '.join(SYMMETRY_SOURCES)}",
            self.symmetry,
        )
        _check(self.gap_head in GAP_HEADS, f"{c}.gap_head", f"must be one of {', '.join(GAP_HEADS)}", self.gap_head)
        _check(
            self.metal_gate in METAL_GATES,
            f"{c}.metal_gate",
            f"must be one of {', '.join(METAL_GATES)}",
            self.metal_gate,
        )
        _check_fold(self.holdout_fold, f"{c}.holdout_fold")
        _check_rows(self.max_train_rows, f"{c}.max_train_rows")
        _check_rows(self.replay_max_rows, f"{c}.replay_max_rows")
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        self.dataset = str(self.dataset)
        _check_types(self)

    def to_dict(self) -> dict:
        return _to_dict(self)


RunConfig = PretrainConfig | FinetuneConfig
_KINDS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def config_from_dict(d: dict) -> RunConfig:
    """The typed config of a run folder's config.json (this version's or version 1's)."""
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"config.json: unknown run kind {kind!r}; expected pretrain or finetune")
    version = d.get("version", 1)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ConfigError(
            f"config.json: format version {version!r} is newer than this matmtl reads "
            f"(<= {CONFIG_VERSION}); upgrade matmtl"
        )
    cls = _KINDS[kind]
    values = _known(cls, d, kind)
    if "model" in values:
        values["model"] = ModelConfig.from_dict(values["model"])
    train = dict(values.get("train", {}))
    if version == 1:  # matmtl 0.1 had no validation split: its runs resume as they started
        train.setdefault("val_fraction", 0.0)
    values["train"] = TrainConfig.from_dict(train)
    if kind == "finetune":  # runs from before the symmetry option fine-tuned on compositions only
        values.setdefault("symmetry", "none")
    values["mtl"] = MTLConfig.from_dict(values.get("mtl", {}))
    return cls(**values)


def default_of(cls, name: str):
    """A config field's default value, without making a config (so without torch)."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


def resolve_size(size: str, device: str) -> str:
    """The preset of a ``--size`` choice: ``auto`` is ``large`` on CUDA, else ``default``."""
    if size == "auto":
        return "large" if device == "cuda" else "default"
    return "default" if size == "small" else size


# -- helpers ---------------------------------------------------------------------------


def _known(cls, d: dict, where: str) -> dict:
    names = {f.name for f in fields(cls)}
    ignored = {"kind", "version", "created"}
    unknown = set(d) - names - ignored
    if unknown:
        raise ConfigError(f"{where} config: unknown setting(s) {sorted(unknown)}")
    return {k: v for k, v in d.items() if k in names}


def _to_dict(cfg) -> dict:
    out = {"kind": cfg.kind, "version": CONFIG_VERSION}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = v.to_dict() if hasattr(v, "to_dict") else (list(v) if isinstance(v, tuple) else v)
    return out


def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _check_fold(k, where: str) -> None:
    _check(k is None or (_is_int(k, 0) and k <= 4), where, "must be a matbench fold 0..4 or None", k)


def _check_rows(n, where: str) -> None:
    _check(n is None or _is_int(n, 1), where, "must be None or an integer >= 1", n)


def _check_types(cfg) -> None:
    for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("mtl", MTLConfig)):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            _check(isinstance(v, cls), f"{type(cfg).__name__}.{name}", f"must be a {cls.__name__}", v)
