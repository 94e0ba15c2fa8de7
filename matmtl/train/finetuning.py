"""Fine-tuning a pretrained model on experimental band gaps with DFT tasks kept as an
auxiliary anchor loss: load data -> build model -> sources -> fit -> finish.

* ``aux_source="replay"``: every step also takes a mini-batch of the original DFT
  training rows (true labels) for the auxiliary heads.
* ``aux_source="distill"``: the pretrained model's own predictions for the auxiliary
  tasks on the fine-tuning compositions are the auxiliary targets (no DFT data needed).

The loss of a step is ``L_gap_expt + aux_weight * sum(L_aux)`` (static prior weights),
combined by :class:`~matmtl.mtl.MTLBackward` with the run's :class:`~matmtl.config.MTLConfig`:
loss balancing, gradient surgery, L2-SP soft sharing towards the pretrained encoder and
the gradient-geometry monitor.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..checkpoints import load_checkpoint, read_json
from ..config import FinetuneConfig, TrainConfig
from ..data import DataWarning
from ..distributed import World
from ..errors import MatmtlError
from ..io import atomic_write_json
from ..models import TaskSpec
from ..uncertainty import Domain, training_domain
from .data import (
    _load,
    attach_symmetry,
    composition_keys,
    dft_split,
    mp_ground_state_symmetry,
    split_rows,
    split_validation,
    task_unit,
    to_taskdata,
    validation_positions,
)
from .engine import Source, TaskData, set_determinism
from .fit import RunResult, featurizer_settings, fit, joined, on_device, start_run
from .pretraining import validation_scorer
from .report import finish_run
from .runs import latest_run, runs_root

MAIN_TASK = "gap_expt"


@dataclass
class Table:
    """The fine-tuning rows as read and checked: the dataset, its target column and a
    summary of the bad rows left out."""

    ds: object
    column: str
    bad: dict | None


def finetune(
    config: FinetuneConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Fine-tune a pretrained checkpoint on experimental band gaps (see module doc) into
    the run folder ``out`` (default: a new folder under the user cache). The checkpoint,
    its heads and the data are checked before the folder is made. Under ``torchrun`` the
    processes share each batch (docs/distributed.md); rank 0 writes the folder."""
    config = config or FinetuneConfig()
    config = replace(config, checkpoint=str(find_pretrained(config.checkpoint).resolve()))
    load_checkpoint(config.checkpoint)  # fail early, naming the file, before a run folder is made
    check_aux(config.aux, config.checkpoint)
    check_gap_head(config.gap_head, config.checkpoint)
    table = load_table(config)  # bad files and labels fail before a folder is made
    world = joined(config.train)
    with start_run(config, out, world) as run:
        return run_finetune(run.path, config, table=table, progress=progress, stop_after=stop_after, world=world)


def run_finetune(
    run_dir: Path,
    config: FinetuneConfig,
    *,
    table: Table | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    world: World | None = None,
) -> RunResult:
    """Fine-tune in ``run_dir`` from its saved state, if any (``world``: the processes
    sharing each batch; default this one alone)."""
    world = world or World()
    progress = progress and world.is_main
    train = on_device(config.train)
    set_determinism(train.seed, train.threads, train.device, train.deterministic)
    base, base_meta = load_checkpoint(config.checkpoint)
    check_aux(config.aux, config.checkpoint, base)
    check_gap_head(config.gap_head, config.checkpoint, base)
    table = table or load_table(config)
    with world.node_first("featurizing the rows"):
        tr_pos, tr, va, te = split_table(table, config, train)
        lookup = mp_ground_state_symmetry(config.data_dir) if config.symmetry == "mp_ground_state" else None
        sym_rows = None
        if lookup is not None:  # the gap head learns compositions with (and, by dropout, without) their symmetry
            tr, sym_rows = attach_symmetry(tr, lookup)
        model = build_model(base, config.gap_head)
        sources, replay_info = make_sources(config, base, base_meta, tr, model.cfg.members, train)
    weights = {
        MAIN_TASK: 1.0,
        **{t: config.aux_weight for t in config.aux},
        **{f"{t}@replay": config.aux_weight for t in config.aux},
    }
    # soft sharing (L2-SP) pulls the encoder towards the pretrained one, also after a resume
    reference = [p.detach().clone() for p in base.shared_parameters()]

    done = fit(
        run_dir,
        model,
        config,
        train,
        sources,
        validation_scorer(va, [MAIN_TASK], train),
        select=f"val_mae_{MAIN_TASK}",
        weights=weights,
        reference=reference,
        progress=progress,
        stop_after=stop_after,
        world=world,
    )
    if not done.finished:
        return RunResult(run_dir, {}, done.history, finished=False)
    dropped = drop_stale_heads(model, config.aux)
    domain = gap_domain(tr, base_meta if MAIN_TASK in base.heads else None)
    metrics = {
        "kind": "finetune",
        "dataset": table.ds.name,
        "target_column": table.column,
        "aux": list(config.aux),
        "aux_source": config.aux_source if config.aux else None,
        "aux_weight": config.aux_weight,
        "holdout_fold": config.holdout_fold,
        "train_rows": int(len(tr)),
        "validation_rows": int(len(va)),
        "holdout_rows": int(len(te)),
        "bad_rows": table.bad,
        "replay": replay_info,
        "dropped_heads": dropped,
        "symmetry": config.symmetry,
        "gap_head": model.tasks[MAIN_TASK].head,
        "train_rows_with_mp_symmetry": sym_rows,
        **done.summary(),
    }
    meta = {
        "kind": "finetune",
        "config": config.to_dict(),
        "parent": {
            "checkpoint": config.checkpoint,
            "data_sha256": base_meta.get("data_sha256"),
            "metrics": base_meta.get("metrics", {}).get("holdout"),
        },
        "elements": sorted(set(base_meta.get("elements", [])) | set(tr.elements())),
        "featurizer": featurizer_settings(),
        "data_sha256": tr.digest(),
        "mtl": done.trainer.mtl.config(),
        # what the gap head was trained on: predict's trust notes measure inputs against it
        "domain": {MAIN_TASK: domain},
        # kept DFT heads start from the parent's calibration; held-out labels refit it
        "uncertainty": {
            t: {**c, "from": "parent checkpoint"}
            for t, c in base_meta.get("uncertainty", {}).items()
            if t in config.aux
        },
    }
    eval_tasks = [MAIN_TASK] + [t for t in config.aux if t in te.targets]

    def extra(m) -> dict:  # after the metal cut is chosen, before the checkpoint is written
        out = {"structure_vs_formula": structure_vs_formula(m, te, lookup)} if lookup is not None else {}
        if config.metal_gate == "mp_pbe":
            try:
                out["metal_gate"] = fit_metal_gate(run_dir, m, tr, va, te, config.data_dir, domain)
            except Exception as exc:  # noqa: BLE001 - the trained model is kept (ungated), never lost
                out["metal_gate"] = {"mode": "off", "skipped": f"the gate failed: {type(exc).__name__}: {exc}"}
        return out

    mtl = done.trainer.mtl

    def finish() -> dict:
        out = finish_run(run_dir, model, te, va, eval_tasks, done.history, meta, metrics, mtl, progress, extra=extra)
        rows = tr_pos[validation_positions(len(tr_pos), train.val_fraction, train.row_seed)[1]]
        if len(rows) == len(va):  # (the rows are featurized one to one)
            write_validation_predictions(run_dir, model, va, rows)
        return out

    metrics.update(world.main_does(finish, "writing the run's results"))
    return RunResult(run_dir, metrics, done.history)


# -- the pieces ----------------------------------------------------------------------


def split_table(table: Table, config: FinetuneConfig, train: TrainConfig):
    """The fine-tuning rows of ``table``: the training rows' dataset positions and the
    featurized training, validation and held-out rows (seeded by ``train.row_seed``)."""
    tr_pos, te_pos = split_rows(table.ds, config.holdout_fold, config.max_train_rows, train.row_seed, shrink_test=False)
    tr = to_taskdata(table.ds, tr_pos, {MAIN_TASK: table.column})
    te = to_taskdata(table.ds, te_pos, {MAIN_TASK: table.column})
    tr, va = split_validation(tr, train.val_fraction, train.row_seed)
    return tr_pos, tr, va, te


def find_pretrained(checkpoint: str | Path | None) -> Path:
    """The given checkpoint, else the latest finished pretraining run in the user cache."""
    if checkpoint is not None:
        return Path(checkpoint).expanduser()
    found = latest_run("pretrain")
    if found is None:
        raise MatmtlError(
            f"no pretrained model in {runs_root()}; make one with `matmtl pretrain` (or give the checkpoint)"
        )
    return found


def _heads(ckpt, model=None) -> dict[str, str]:
    """Task name -> head type ("mlp" or "correction") of a checkpoint (read from its
    model.json) or of its loaded model."""
    if model is not None:
        return {name: t.head for name, t in model.tasks.items()}
    meta = read_json(Path(ckpt) / "model.json") if Path(ckpt).is_dir() else read_json(Path(ckpt).parent / "model.json")
    return {t["name"]: t.get("head", "mlp") for t in meta.get("tasks", [])}


def check_gap_head(gap_head: str, ckpt, model=None) -> None:
    """Correction learning needs the checkpoint's DFT gap head. A fine-tuned checkpoint
    goes on training its own experimental-gap head: asking it for correction learning
    when that head is not a correction head is an error, not a silent switch."""
    if gap_head != "correction":
        return
    have = _heads(ckpt, model)
    if MAIN_TASK in have and have[MAIN_TASK] != "correction":
        raise MatmtlError(
            f"gap_head='correction': the checkpoint {ckpt} is fine-tuned already (its {MAIN_TASK!r} head is a "
            f"plain {have[MAIN_TASK]!r} head, trained on from there); correction learning starts from a "
            "pretrained checkpoint"
        )
    if MAIN_TASK not in have and "gap_pbe" not in have:
        raise MatmtlError(
            f"gap_head='correction' learns a correction to the DFT gap head, but the pretrained checkpoint "
            f"{ckpt} has no 'gap_pbe' head (pretrain with the tasks e_form,gap_pbe)"
        )


def check_aux(aux_tasks, ckpt, model=None) -> None:
    """Every auxiliary task must have a head in the pretrained checkpoint."""
    have = _heads(ckpt, model)
    for t in aux_tasks:
        if t not in have:
            hint = " (pretrain with the tasks e_form,gap_pbe to get a DFT gap head)" if t == "gap_pbe" else ""
            raise MatmtlError(f"auxiliary task {t!r}: the pretrained checkpoint {ckpt} has no {t!r} head{hint}")


def load_table(config: FinetuneConfig) -> Table:
    """The fine-tuning dataset, its target column (checked: gaps >= 0) and the bad rows
    left out (reported as DataWarnings, not silent)."""
    from ..data import load_dataset

    path = Path(config.dataset).expanduser()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        if path.suffix or path.exists():  # a user table: the target column is named, other columns are metadata
            ds = load_dataset(str(path), targets=[config.target] if config.target else None)
        else:
            ds = _load(config.dataset, config.data_dir)
    for w in caught:
        if issubclass(w.category, DataWarning):
            warnings.warn(str(w.message), DataWarning, stacklevel=3)
    column = target_column(ds, config.target)
    if np.any(ds.target(column) < 0):
        raise MatmtlError(f"{config.dataset}: target {column!r} has negative values; a band gap must be >= 0")
    return Table(ds, column, ds.bad_rows.to_dict() if ds.bad_rows.n_bad else None)


def target_column(ds, target: str | None) -> str:
    if target:
        if target not in ds.targets:
            raise MatmtlError(f"{ds.name}: no target column {target!r}; targets: {ds.targets}")
        return target
    if len(ds.targets) == 1:
        return ds.targets[0]
    gaps = [t for t in ds.targets if "gap" in t.lower()]
    if len(gaps) == 1:
        return gaps[0]
    raise MatmtlError(f"{ds.name}: several target columns {ds.targets}; choose one (the target setting)")


def build_model(base, gap_head: str = "warm_start"):
    """The pretrained model with a new experimental-gap head. ``gap_head="warm_start"``:
    a copy of the DFT gap head when the checkpoint has one (trained on from there);
    ``"correction"``: the frozen DFT gap head plus a correction that starts at zero
    (:class:`~matmtl.models.CorrectionHead`). A checkpoint that already has an
    experimental-gap head (a fine-tuned model, e.g. a shipped one) goes on training that head."""
    model = copy.deepcopy(base)
    if MAIN_TASK in base.heads:
        return model
    model.add_task(
        TaskSpec(MAIN_TASK, "hurdle", task_unit(MAIN_TASK), head="correction" if gap_head == "correction" else "mlp")
    )
    if "gap_pbe" in base.heads:
        target = model.heads[MAIN_TASK].base if gap_head == "correction" else model.heads[MAIN_TASK]
        target.load_state_dict(base.heads["gap_pbe"].state_dict())
    return model


def gap_domain(tr: TaskData, parent_meta: dict | None) -> dict:
    """The gap head's training domain: this run's rows, plus the parent's compositions when
    the parent's own experimental-gap head goes on training here (a fine-tuned checkpoint)."""
    parent = ((parent_meta or {}).get("domain") or {}).get(MAIN_TASK)
    if not parent:
        return training_domain(tr.z, tr.frac, tr.spg)
    old = Domain(parent)
    z, frac = np.zeros((len(old.z), tr.z.shape[1]), np.int64), np.zeros((len(old.z), tr.z.shape[1]), np.float32)
    width = min(old.z.shape[1], tr.z.shape[1])
    z[:, :width], frac[:, :width] = old.z[:, :width], old.frac[:, :width]
    rec = training_domain(np.concatenate([tr.z, z]), np.concatenate([tr.frac, frac]))
    rows, sym = int(parent.get("rows", len(old.z))), parent.get("symmetry_fraction")
    rec["rows"] = len(tr) + rows
    rec["symmetry_fraction"] = None if sym is None else (float((tr.spg > 0).sum()) + sym * rows) / rec["rows"]
    return rec


def make_sources(config: FinetuneConfig, base, base_meta: dict, tr: TaskData, members: int, train):
    """The batch sources: the experimental rows (with distilled DFT targets for
    ``distill``) and, for ``replay``, the pretraining run's DFT rows."""
    aux = list(config.aux)
    main_tasks = [MAIN_TASK]
    if aux and config.aux_source == "distill":
        teacher = base.predict_arrays(tr.z, tr.frac, tr.spg, aux)
        for t in aux:
            tr.targets[t] = teacher[t].mean(1).astype(np.float32)
        main_tasks = [MAIN_TASK, *aux]
    tr = tr.with_bootstrap(members, train.seed)
    sources = [Source(tr, main_tasks, train.batch_size, "expt")]
    replay_info = None
    if aux and config.aux_source == "replay":
        pcfg = base_meta.get("config", {})
        rep, _, replay_info = dft_split(
            aux,
            pcfg.get("holdout_fold", 0),
            config.replay_max_rows or pcfg.get("max_rows"),
            train.seed,
            config.data_dir or pcfg.get("data_dir"),
        )
        sources.append(Source(rep.with_bootstrap(members, train.seed + 1), aux, train.batch_size, "replay"))
    return sources, replay_info


VALIDATION_PREDICTIONS = "validation_predictions.json"


def write_validation_predictions(run_dir: Path, model, va: TaskData, rows: np.ndarray) -> None:
    """``validation_predictions.json``: the kept model's experimental-gap predictions (eV,
    ensemble mean, after the metal cut chosen on these rows) on the run's validation rows,
    with their positions in the dataset and their labels: what choosing between runs, or
    averaging them, on validation rows needs."""
    if not len(va):
        return
    pred = model.predict_arrays(va.z, va.frac, va.spg, [MAIN_TASK])[MAIN_TASK].mean(1)
    atomic_write_json(
        Path(run_dir) / VALIDATION_PREDICTIONS,
        {
            "task": MAIN_TASK,
            "unit": task_unit(MAIN_TASK),
            "rows": [int(r) for r in rows],
            "target": [float(y) for y in va.targets[MAIN_TASK]],
            "pred": [float(p) for p in pred],
        },
    )


def fit_metal_gate(
    run_dir: Path, model, tr: TaskData, va: TaskData, te: TaskData, data_dir: str | None, domain: dict | None = None
) -> dict:
    """The DFT metal gate of this run (:mod:`matmtl.metal_gate`): its line fitted on the
    training rows, its mode chosen on the validation rows, written with the PBE gaps it
    needs to ``metal_gate.json.gz``; the held-out rows are gated once and scored. A held-out
    row with a composition of the gap head's training ``domain`` (this run's training rows,
    and a fine-tuned parent's; the record predict reads) is not gated. Without Materials
    Project tables or validation rows the gate is off, and says why."""
    from ..metal_gate import GATE_FILE, PbeGaps, fit, save

    if not len(va):
        return {"mode": "off", "skipped": "no validation rows to choose the gate on"}
    try:
        gaps = PbeGaps.from_data(data_dir)
    except (MatmtlError, OSError) as exc:
        return {"mode": "off", "skipped": f"no Materials Project PBE gaps ({exc})"}
    pbe = gate_lookup(gaps, tr, domain)

    def gap(d: TaskData) -> np.ndarray:
        return model.predict_arrays(d.z, d.frac, d.spg, [MAIN_TASK])[MAIN_TASK].mean(1)

    va_pbe = pbe(va)
    gate, maes = fit(pbe(tr, held_out=False), tr.targets[MAIN_TASK], gap(va), va.targets[MAIN_TASK], va_pbe)
    record = {
        **gate.to_dict(),
        "validation_mae": maes,
        "validation_rows": int(len(va)),
        "validation_rows_with_pbe_gap": int(np.isfinite(va_pbe).sum()),
    }
    save(Path(run_dir) / GATE_FILE, gate, gaps, {"validation_mae": maes})
    if len(te):  # the test rows: gated once, nothing fitted on them
        y = np.asarray(te.targets[MAIN_TASK], dtype=np.float64)
        pred = gap(te)
        record["holdout_mae"] = float(np.abs(pred - y).mean())
        record["holdout_mae_gated"] = float(np.abs(gate.apply(pred, pbe(te)) - y).mean())
    return record


def gate_lookup(gaps, tr: TaskData, domain: dict | None = None):
    """``pbe(rows, held_out=True)``: Materials Project's PBE gap of each row's composition
    (its ground state, or the row's polymorph) from ``gaps`` (a :class:`~matmtl.metal_gate.PbeGaps`);
    held-out rows of a composition the gap head trained on (``domain``, else ``tr``) get
    NaN, so the gate leaves them alone."""
    from ..metal_gate import leave_seen, seen_rows, trained_keys

    dom = Domain(domain) if domain else None
    trained = trained_keys(dom.z, dom.frac) if dom is not None else trained_keys(tr.z, tr.frac)

    def pbe(d: TaskData, held_out: bool = True) -> np.ndarray:
        g = gaps.lookup(composition_keys(d.z, d.frac), d.spg)
        return leave_seen(g, seen_rows(d.z, d.frac, trained)) if held_out else g  # a training composition: not gated

    return pbe


def drop_stale_heads(model, aux) -> list[str]:
    """Heads that were not trained here no longer match the fine-tuned encoder: drop them."""
    dropped = [t for t in list(model.heads) if t not in (MAIN_TASK, *aux)]
    for t in dropped:
        del model.heads[t]
        del model.tasks[t]
    return dropped


def structure_vs_formula(model, te: TaskData, lookup: dict) -> dict | None:
    """On the held-out rows whose composition has a Materials Project polymorph: the gap
    MAE from the formula alone and from the MP ground state's symmetry (what a user gets
    by giving that structure). Measured once, at the end; nothing is fitted on it."""
    with_sym, n = attach_symmetry(te, lookup)
    m = with_sym.spg > 0
    if not m.any():
        return None
    y = np.asarray(te.targets[MAIN_TASK], dtype=np.float64)[m]
    out = {"rows": int(m.sum()), "unit": "eV"}
    for name, spg in (("formula", np.zeros(int(m.sum()), np.int64)), ("mp_ground_state_structure", with_sym.spg[m])):
        p = model.predict_arrays(te.z[m], te.frac[m], spg, [MAIN_TASK])[MAIN_TASK].mean(1)
        out[f"mae_{name}"] = float(np.abs(p - y).mean())
        out[f"mae_{name}_nonmetals"] = float(np.abs(p - y)[y > 0].mean()) if (y > 0).any() else None
    return out
