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

from .errors import ConfigError
from .models import ModelConfig
from .mtl.balance import Balancer, Static, balancer_from
from .mtl.surgery import Sum, Surgery, surgery_from
from .presets import from_preset

CONFIG_VERSION = 2

# The DFT tasks a model can pretrain on (name -> dataset, target column) and the
# auxiliary-task names the fine-tuning anchor accepts.
DFT_TASKS = {"e_form": ("mp", "e_form"), "gap_pbe": ("mp_gap", "gap_pbe")}
AUX_ALIASES = {"dft_energy": "e_form", "dft_gap": "gap_pbe", "e_form": "e_form", "gap_pbe": "gap_pbe"}
AUX_SOURCES = ("replay", "distill")
DEVICES = ("auto", "cpu", "cuda")


def _check(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"{where} {what}, got {value!r}")


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
    val_rows: int = 4096  # held-out rows scored after every epoch (all of them at the end)

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
        _check(isinstance(self.epochs, int) and self.epochs >= 1, f"{c}.epochs", "must be an integer >= 1", self.epochs)
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, f"{c}.batch_size", "must be an integer >= 1",
               self.batch_size)
        _check(self.lr > 0, f"{c}.lr", "must be > 0", self.lr)
        _check(self.weight_decay >= 0, f"{c}.weight_decay", "must be >= 0", self.weight_decay)
        _check(0 <= self.warmup < 1, f"{c}.warmup", "must be in [0, 1)", self.warmup)
        _check(isinstance(self.threads, int) and self.threads >= 0, f"{c}.threads", "must be an integer >= 0",
               self.threads)
        _check(self.device in DEVICES, f"{c}.device", f"must be one of {', '.join(DEVICES)}", self.device)
        _check(0 <= self.sym_dropout <= 1, f"{c}.sym_dropout", "must be in [0, 1]", self.sym_dropout)
        _check(self.grad_clip >= 0, f"{c}.grad_clip", "must be >= 0 (0 = off)", self.grad_clip)
        _check(isinstance(self.val_rows, int) and self.val_rows >= 1, f"{c}.val_rows", "must be an integer >= 1",
               self.val_rows)

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "TrainConfig":
        """A named preset (``tiny``, ``default``, ``large``, ``finetune``, ``finetune-tiny``)
        with ``overrides`` on top."""
        return from_preset(cls, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**_known(cls, d, "train"))


@dataclass
class MTLConfig:
    """How per-task losses become one update: a balancer and a surgery strategy object
    (see :mod:`matmtl.mtl`), L2-SP soft sharing towards the pretrained encoder, and the
    gradient-geometry monitor (every ``monitor_every`` steps over ``monitor_k``
    micro-batches; 0 = off)."""

    balancer: Balancer = field(default_factory=Static)
    surgery: Surgery = field(default_factory=Sum)
    soft_share: float = 0.0
    monitor_every: int = 0
    monitor_k: int = 4

    def __post_init__(self) -> None:
        try:
            self.balancer = balancer_from(self.balancer)
            self.surgery = surgery_from(self.surgery)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"MTLConfig: {exc}") from None
        _check(self.soft_share >= 0, "MTLConfig.soft_share", "must be >= 0", self.soft_share)
        _check(isinstance(self.monitor_every, int) and self.monitor_every >= 0, "MTLConfig.monitor_every",
               "must be an integer >= 0", self.monitor_every)
        _check(isinstance(self.monitor_k, int) and self.monitor_k >= 2, "MTLConfig.monitor_k", "must be an integer >= 2",
               self.monitor_k)

    def to_dict(self) -> dict:
        return {"balancer": self.balancer.to_dict(), "surgery": self.surgery.to_dict(), "soft_share": self.soft_share,
                "monitor_every": self.monitor_every, "monitor_k": self.monitor_k}

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
    """Pretraining on DFT data: ``tasks`` (e_form is the main task; gap_pbe adds the PBE
    gap from mp_gap, each row training only its own head), matbench fold
    ``holdout_fold`` of each dataset held out (None: train on every row)."""

    tasks: tuple[str, ...] = ("e_form",)
    dataset: str = "mp"
    holdout_fold: int | None = 0
    max_rows: int | None = None
    task_weights: dict = field(default_factory=dict)
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)

    kind = "pretrain"

    def __post_init__(self) -> None:
        c = "PretrainConfig"
        self.tasks = tuple(self.tasks)
        _check(bool(self.tasks) and all(t in DFT_TASKS for t in self.tasks), f"{c}.tasks",
               f"must be DFT tasks among {', '.join(DFT_TASKS)}", list(self.tasks))
        _check(len(set(self.tasks)) == len(self.tasks), f"{c}.tasks", "must not repeat a task", list(self.tasks))
        _check("e_form" in self.tasks, f"{c}.tasks", "must include the main task e_form", list(self.tasks))
        _check(self.dataset == "mp", f"{c}.dataset", "must be 'mp' (matbench mp_e_form, the main task's data)",
               self.dataset)
        _check_fold(self.holdout_fold, f"{c}.holdout_fold")
        _check_rows(self.max_rows, f"{c}.max_rows")
        unknown = set(self.task_weights) - set(self.tasks)
        _check(not unknown, f"{c}.task_weights", f"names tasks that are not trained ({sorted(unknown)})",
               self.task_weights)
        _check_types(self)
        _check(self.mtl.soft_share == 0, f"{c}.mtl.soft_share",
               "pulls the encoder towards pretrained weights: use it when fine-tuning, not pretraining",
               self.mtl.soft_share)

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
    holdout_fold: int | None = 0
    max_train_rows: int | None = None
    replay_max_rows: int | None = None
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
        _check(self.aux_source in AUX_SOURCES, f"{c}.aux_source", f"must be one of {', '.join(AUX_SOURCES)}",
               self.aux_source)
        _check(self.aux_weight >= 0, f"{c}.aux_weight", "must be >= 0", self.aux_weight)
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
        raise ConfigError(f"config.json: format version {version!r} is newer than this matmtl reads "
                          f"(<= {CONFIG_VERSION}); upgrade matmtl")
    cls = _KINDS[kind]
    values = _known(cls, d, kind)
    if "model" in values:
        values["model"] = ModelConfig.from_dict(values["model"])
    values["train"] = TrainConfig.from_dict(values.get("train", {}))
    values["mtl"] = MTLConfig.from_dict(values.get("mtl", {}))
    return cls(**values)


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


def _check_fold(k, where: str) -> None:
    _check(k is None or (isinstance(k, int) and 0 <= k <= 4), where, "must be a matbench fold 0..4 or None", k)


def _check_rows(n, where: str) -> None:
    _check(n is None or (isinstance(n, int) and n >= 1), where, "must be None or an integer >= 1", n)


def _check_types(cfg) -> None:
    for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("mtl", MTLConfig)):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            _check(isinstance(v, cls), f"{type(cfg).__name__}.{name}", f"must be a {cls.__name__}", v)
