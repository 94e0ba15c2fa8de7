"""What an evaluation runs with: :class:`EvalSettings` (checked here; errors name the
parameter, ``EvalSettings.folds``), the variants, the ``quick`` caps, and the training
configs of the cells, built from the presets of :class:`~matmtl.models.ModelConfig` and
:class:`~matmtl.config.TrainConfig` (no preset value is restated here).

This module imports no torch: the command line reads its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ..errors import ConfigError

FOLDS = (0, 1, 2, 3, 4)
NEURAL_VARIANTS = ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad")
ALL_VARIANTS = ("rf_magpie",) + NEURAL_VARIANTS
ANCHORED = ("finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
EFFICIENCY_VARIANTS = ("scratch", "finetune", "finetune_anchor")
EFFICIENCY_CHOICES = EFFICIENCY_VARIANTS + ("rf_magpie",)
PROTOCOL_FIELDS = ("val_fraction", "patience")  # fine-tuning TrainConfig fields set by EvalSettings
ANCHORS = ("validation", "replay", "distill")
# the DFT task(s) the anchored variants keep (``matmtl evaluate --aux``); names as ``matmtl finetune --aux``
DEFAULT_AUX = ("dft_energy",)
AUX_NAMES = {"dft_energy": "e_form", "dft_gap": "gap_pbe"}  # alias -> task
AUX_ALIAS = {**{a: a for a in AUX_NAMES}, **{task: a for a, task in AUX_NAMES.items()}}  # alias or task -> alias
# the variant whose test predictions go into the matbench results file (results.json.gz)
SUBMISSION_VARIANT = "finetune_anchor_replay"

# quick: capped rows, a smaller baseline and a frequent monitor; the model and training
# sizes are the "tiny" presets (ModelConfig.preset("tiny"), TrainConfig.preset("tiny" /
# "finetune-tiny")). A smoke test of the whole pipeline, not results.
QUICK = {
    "expt_cap": 200,
    "forgetting_rows": 200,
    "mp_test_cap": 300,
    "rf_trees": 25,
    "pretrain_max_rows": 400,
    "replay_max_rows": 400,
    "monitor_every": 5,
}


@dataclass(frozen=True)
class VariantSpec:
    """One fine-tuning variant: where its weights start (``pretrained`` or a seeded
    random ``scratch`` init of the same architecture), its anchor and its surgery."""

    name: str
    init: str  # "pretrained" | "scratch"
    aux: tuple[str, ...] = ()
    aux_source: str = "replay"
    pcgrad: bool = False
    description: str = ""

    @property
    def anchored(self) -> bool:
        return bool(self.aux)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "init": self.init,
            "aux": list(self.aux),
            "aux_source": self.aux_source if self.aux else None,
            "surgery": "pcgrad" if self.pcgrad else "none",
        }


VARIANTS: dict[str, VariantSpec] = {
    "scratch": VariantSpec("scratch", "scratch", description="same architecture, random init, expt_gap only"),
    "finetune": VariantSpec("finetune", "pretrained", description="pretrained on mp, fine-tuned without an anchor"),
    "finetune_anchor_replay": VariantSpec(
        "finetune_anchor_replay",
        "pretrained",
        ("dft_energy",),
        "replay",
        description="+ e_form anchor, replayed DFT rows (true labels)",
    ),
    "finetune_anchor_distill": VariantSpec(
        "finetune_anchor_distill",
        "pretrained",
        ("dft_energy",),
        "distill",
        description="+ e_form anchor, pretrained model's predictions as targets",
    ),
}
PCGRAD_DESCRIPTION = "+ e_form anchor (source chosen per fold on validation rows) with PCGrad surgery"
BASELINE_DESCRIPTION = "RandomForestRegressor on matminer Magpie features"


def pcgrad_spec(source: str) -> VariantSpec:
    """The PCGrad variant on the anchor source chosen for a fold."""
    return VariantSpec(
        "finetune_anchor_pcgrad",
        "pretrained",
        ("dft_energy",),
        source,
        pcgrad=True,
        description=f"+ e_form anchor ({source}) with PCGrad gradient surgery",
    )


def _fail(name: str, what: str, value) -> None:
    raise ConfigError(f"EvalSettings.{name} {what}, got {value!r}")


def _check_folds(name: str, folds, allow_empty: bool) -> tuple[int, ...]:
    folds = tuple(folds)
    ok = all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 4 for k in folds)
    if not ok or len(set(folds)) != len(folds) or (not folds and not allow_empty):
        _fail(name, "must be distinct matbench folds among 0..4" + ("" if allow_empty else " (at least one)"), folds)
    return tuple(sorted(folds))


@dataclass
class EvalSettings:
    """The options of one evaluation (``matmtl evaluate`` flags, or keywords of
    :func:`matmtl.eval.evaluate`). ``out`` None: a new folder under the matmtl cache;
    ``markdown`` None: ``<out>/results.md`` (``page=False``: no page). Existing results
    files in ``out`` are replaced only with ``force=True``. The ``*_overrides`` set
    fields of the preset configs (``TrainConfig`` / ``ModelConfig``) for every cell.

    The protocol of the fine-tuning cells: ``val_fraction`` of each run's training rows
    are its validation rows (best epoch, early stopping after ``patience`` epochs without
    a better validation MAE, the metal cut, the calibration, and ``anchor="validation"``:
    the anchor source); None takes the fine-tuning preset's value. ``symmetry`` is
    :attr:`matmtl.config.FinetuneConfig.symmetry` and ``gap_head``
    :attr:`matmtl.config.FinetuneConfig.gap_head`. ``submission_variant`` is the variant
    written to the matbench results file ``results.json.gz``."""

    variants: tuple[str, ...] = ALL_VARIANTS
    folds: tuple[int, ...] = FOLDS
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    efficiency_variants: tuple[str, ...] = EFFICIENCY_VARIANTS
    efficiency_folds: tuple[int, ...] | None = None  # None: the same as folds
    mp_folds: tuple[int, ...] | None = None  # None: the transfer fold on CPU, all 5 on CUDA
    skip_baseline: bool = False
    skip_mp: bool = False
    checkpoint: str | None = None
    quick: bool = False
    out: str | None = None
    markdown: str | None = None
    page: bool = True
    force: bool = False
    work_dir: str | None = None  # default: <matmtl cache>/eval
    train_overrides: dict = field(default_factory=dict)  # fine-tuning TrainConfig fields
    pretrain_overrides: dict = field(default_factory=dict)  # pretraining TrainConfig fields
    model_overrides: dict = field(default_factory=dict)  # pretraining ModelConfig fields
    pretrain_tasks: tuple[str, ...] = ("e_form", "gap_pbe")
    pretrain_fold: int = 0
    anchor: str = "validation"  # validation | replay | distill
    symmetry: str = "mp_ground_state"  # FinetuneConfig.symmetry: none | mp_ground_state
    gap_head: str = "warm_start"  # FinetuneConfig.gap_head: warm_start | correction
    val_fraction: float | None = None  # None: the fine-tuning preset's TrainConfig.val_fraction
    patience: int | None = None  # None: the fine-tuning preset's TrainConfig.patience
    submission_variant: str = SUBMISSION_VARIANT
    aux: tuple[str, ...] = DEFAULT_AUX  # the anchored variants' DFT task(s): dft_energy, dft_gap
    aux_weight: float = 0.5
    # L2-SP: (lambda/2)·||theta - theta_pretrained||^2 on the shared encoder of every variant that
    # starts from the pretrained model (FinetuneConfig.mtl.soft_share); 0 = off
    soft_share: float = 0.0
    monitor_every: int = 50
    monitor_k: int = 4
    forgetting_rows: int = 5000
    rf_trees: int = 500
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    keep_runs: bool = False
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self._check_variants()
        self._check_folds()
        if any(not 0 < f <= 1 for f in self.fractions):
            _fail("fractions", "must lie in (0, 1]", self.fractions)
        self.fractions = tuple(sorted({float(f) for f in self.fractions}))
        if self.anchor not in ANCHORS:
            _fail("anchor", f"must be one of {', '.join(ANCHORS)}", self.anchor)
        self._check_protocol()
        for name, low in (
            ("aux_weight", 0),
            ("soft_share", 0),
            ("monitor_every", 0),
            ("monitor_k", 2),
            ("forgetting_rows", 1),
            ("rf_trees", 1),
            ("seed", 0),
        ):
            if not getattr(self, name) >= low:
                _fail(name, f"must be >= {low}", getattr(self, name))
        self.pretrain_tasks = tuple(self.pretrain_tasks)
        self._check_aux()
        self._check_overrides()
        if self.quick:
            self.forgetting_rows = min(self.forgetting_rows, QUICK["forgetting_rows"])
            self.rf_trees = min(self.rf_trees, QUICK["rf_trees"])
            self.monitor_every = min(self.monitor_every, QUICK["monitor_every"]) if self.monitor_every else 0

    def _check_protocol(self) -> None:
        """symmetry, val_fraction and patience (checked by the config dataclasses
        themselves; None: the fine-tuning preset's value)."""
        from ..config import GAP_HEADS, SYMMETRY_SOURCES, TrainConfig

        if self.symmetry not in SYMMETRY_SOURCES:
            _fail("symmetry", f"must be one of {', '.join(SYMMETRY_SOURCES)}", self.symmetry)
        if self.gap_head not in GAP_HEADS:
            _fail("gap_head", f"must be one of {', '.join(GAP_HEADS)}", self.gap_head)
        if self.submission_variant not in ALL_VARIANTS:
            _fail("submission_variant", f"must be one of {', '.join(ALL_VARIANTS)}", self.submission_variant)
        preset = TrainConfig.preset(self.finetune_preset)
        for name in PROTOCOL_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
            if name in (self.train_overrides or {}):
                _fail("train_overrides", f"must not set {name}; use EvalSettings.{name}", self.train_overrides)
            try:
                TrainConfig.from_dict({**preset.to_dict(), name: getattr(self, name)})
            except ConfigError as exc:
                raise ConfigError(f"EvalSettings.{name}: {exc}") from None
        if self.anchor == "validation" and not self.val_fraction > 0:
            _fail(
                "anchor", "'validation' needs validation rows (val_fraction > 0); fix the source instead", self.anchor
            )

    def _check_aux(self) -> None:
        """``aux``: distinct DFT tasks (alias or task name, stored as aliases), at least one,
        each among the pretraining tasks when the harness pretrains itself."""
        names = tuple(self.aux) if not isinstance(self.aux, str) else (self.aux,)
        if not names or any(a not in AUX_ALIAS for a in names):
            _fail("aux", f"must name DFT tasks among {', '.join(AUX_NAMES)} (at least one)", self.aux)
        aliases = tuple(dict.fromkeys(AUX_ALIAS[a] for a in names))
        if len(aliases) != len(names):
            _fail("aux", "must not repeat a task", self.aux)
        if self.checkpoint is None:
            missing = [a for a in aliases if AUX_NAMES[a] not in self.pretrain_tasks]
            if missing:
                tasks = [AUX_NAMES[a] for a in missing]
                _fail(
                    "pretrain_tasks",
                    f"must include {tasks}: EvalSettings.aux {aliases} anchors the fine-tuning to them",
                    self.pretrain_tasks,
                )
        self.aux = aliases

    def spec(self, name: str, source: str | None = None) -> VariantSpec:
        """The :class:`VariantSpec` of a fine-tuning variant with this evaluation's anchor
        tasks (``source``: the anchor source of the PCGrad variant)."""
        spec = pcgrad_spec(source) if name == "finetune_anchor_pcgrad" else VARIANTS[name]
        if not spec.anchored or self.aux == DEFAULT_AUX:
            return spec  # (the default: the fingerprints of earlier cells stay as they were)
        text = spec.description.replace("e_form anchor", f"{self.aux_label} anchor")
        return replace(spec, aux=self.aux, description=text)

    def description(self, name: str) -> str:
        """What a variant is, in a sentence (its anchor tasks named)."""
        if name in VARIANTS:
            return self.spec(name).description
        if name == "finetune_anchor_pcgrad":
            return PCGRAD_DESCRIPTION.replace("e_form anchor", f"{self.aux_label} anchor")
        return BASELINE_DESCRIPTION

    @property
    def aux_label(self) -> str:
        return " + ".join(AUX_NAMES[a] for a in self.aux)

    def _check_variants(self) -> None:
        for name, choices in (("variants", ALL_VARIANTS), ("efficiency_variants", EFFICIENCY_CHOICES)):
            values = tuple(getattr(self, name))
            bad = [v for v in values if v not in choices]
            if bad:
                _fail(name, f"has unknown variant(s) {bad}; choose from {', '.join(choices)}", values)
            setattr(self, name, values)

    def _check_folds(self) -> None:
        self.folds = _check_folds("folds", self.folds, allow_empty=False)
        if self.efficiency_folds is None:
            self.efficiency_folds = self.folds
        self.efficiency_folds = _check_folds("efficiency_folds", self.efficiency_folds, allow_empty=True)
        if not set(self.efficiency_folds) <= set(self.folds):
            _fail("efficiency_folds", f"must be among the folds {list(self.folds)}", self.efficiency_folds)
        if self.mp_folds is not None:
            self.mp_folds = _check_folds("mp_folds", self.mp_folds, allow_empty=True)
        if self.pretrain_fold not in FOLDS:
            _fail("pretrain_fold", "must be a matbench fold 0..4", self.pretrain_fold)

    def _check_overrides(self) -> None:
        """Every override through the config dataclasses' own validation (on the CPU
        presets; the device only changes which preset the overrides apply to)."""
        self.finetune_train("cpu")
        self.pretrain_config("cpu", self.pretrain_fold)

    # -- what runs ---------------------------------------------------------------------
    @property
    def baseline(self) -> bool:
        return "rf_magpie" in self.variants and not self.skip_baseline

    @property
    def neural(self) -> list[str]:
        return [v for v in self.variants if v in NEURAL_VARIANTS]

    @property
    def cap(self) -> int | None:
        """Training rows per expt_gap fold in quick runs (None: all)."""
        return QUICK["expt_cap"] if self.quick else None

    @property
    def replay_max_rows(self) -> int | None:
        return QUICK["replay_max_rows"] if self.quick else None

    @property
    def mp_test_cap(self) -> int | None:
        return QUICK["mp_test_cap"] if self.quick else None

    # -- the training configs of the cells -------------------------------------------------
    def pretrain_size(self, device: str) -> str:
        """The ModelConfig/TrainConfig preset of pretraining: tiny (quick), large on CUDA
        (the CLI's ``--size auto``), else default."""
        from ..config import resolve_size

        return "tiny" if self.quick else resolve_size("auto", device)

    def pretrain_config(self, device: str, fold: int | None):
        """The :class:`~matmtl.config.PretrainConfig` of the transfer checkpoint (mp fold
        ``fold`` held out)."""
        from ..config import PretrainConfig, TrainConfig
        from ..models import ModelConfig

        size = self.pretrain_size(device)
        model = _overridden(ModelConfig.preset(size), self.model_overrides, "model_overrides")
        train = _overridden(
            TrainConfig.preset(size, seed=self.seed, device=device), self.pretrain_overrides, "pretrain_overrides"
        )
        try:
            return PretrainConfig(
                tasks=self.pretrain_tasks,
                holdout_fold=fold,
                max_rows=QUICK["pretrain_max_rows"] if self.quick else None,
                data_dir=self.data_dir,
                model=model,
                train=train,
            )
        except ConfigError as exc:
            raise ConfigError(f"EvalSettings.pretrain_tasks: {exc}") from None

    @property
    def finetune_preset(self) -> str:
        return "finetune-tiny" if self.quick else "finetune"

    def finetune_train(self, device: str):
        """The fine-tuning :class:`~matmtl.config.TrainConfig` of every variant: the
        preset, the protocol settings (``val_fraction``, ``patience``), the overrides."""
        from ..config import TrainConfig

        protocol = {name: getattr(self, name) for name in PROTOCOL_FIELDS}
        base = TrainConfig.preset(self.finetune_preset, seed=self.seed, device=device, **protocol)
        return _overridden(base, self.train_overrides, "train_overrides")


def _overridden(base, overrides, name: str):
    try:
        return with_overrides(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"EvalSettings.{name}: {exc}") from None


def with_overrides(base, overrides: dict):
    """The config dataclass ``base`` with the fields ``overrides`` set, validated by the
    dataclass's own ``from_dict`` (a :class:`~matmtl.errors.ConfigError` names the field)."""
    cls = type(base)
    if not isinstance(overrides, dict):
        raise ConfigError(f"expected a dict of {cls.__name__} fields, got {overrides!r}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; fields: {', '.join(names)}")
    for k, v in overrides.items():
        if _number(getattr(base, k)) and not _number(v):
            raise ConfigError(f"{cls.__name__}.{k} must be a number, got {v!r}")
    return cls.from_dict({**base.to_dict(), **overrides})


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
