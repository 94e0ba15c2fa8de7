"""The multi-task model: a shared set encoder over a composition's elements (and its
symmetry when a structure is known) with one head per task (hard parameter sharing).

Inputs per material: atomic numbers ``z`` (B, E; 0 = padding), fractions ``frac``
(B, E) and a space-group number ``spg`` (B,; 0 = unknown). Elements are embedded from
matscholar's 200-d vectors (fixed) plus a small learned per-element correction, a
fraction encoding is added, a few self-attention layers let the elements see each other
(Roost/CrabNet-like, small), and a fraction-weighted pool gives the composition vector.
Space group and crystal system are learned tokens; during training a share of rows get
the "unknown" token (symmetry dropout) so compositions without a structure are a
first-class case.

Each task head is an ensemble of ``members`` small MLPs on the shared vector; their
spread is the reported uncertainty. Heads:

* ``regression``: one value per member, on the task's normalised scale.
* ``hurdle`` (band gaps, >= 0 with many exact zeros): per member a metal logit and a
  positive gap ``softplus(raw)``; the point prediction is 0 when the metal probability
  is over 0.5, else the positive gap (MAE-friendly).

A head is an MLP ensemble (``head="mlp"``) or, for correction learning (Δ-learning), a
frozen copy of another task's head plus a learned correction (``head="correction"``):
the experimental gap as the DFT gap head's answer plus what experiment adds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from .elements import MAX_Z, crystal_system_of_spg, element_table, embedding_dim


@dataclass
class TaskSpec:
    """One prediction target. ``mean``/``std`` normalise regression targets; a hurdle
    head predicts 0 (a metal) where a member's metal probability exceeds ``metal_cut``
    (chosen on the run's validation rows)."""

    name: str
    kind: str = "regression"  # or "hurdle"
    unit: str = ""
    mean: float = 0.0
    std: float = 1.0
    metal_cut: float = 0.5
    head: str = "mlp"  # or "correction": see CorrectionHead

    def to_dict(self) -> dict:
        return asdict(self)


class FractionEncoding(nn.Module):
    def __init__(self, dim: int, n_fourier: int):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, n_fourier + 1, dtype=torch.float32) * math.pi, persistent=False)
        self.proj = nn.Linear(2 + 2 * n_fourier, dim)

    def forward(self, frac: torch.Tensor) -> torch.Tensor:
        f = frac.unsqueeze(-1)
        ang = f * self.freqs
        feats = torch.cat([f, torch.log(f.clamp_min(1e-4)) / 4, torch.sin(ang), torch.cos(ang)], dim=-1)
        return self.proj(feats)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, element_vectors: torch.Tensor | None = None):
        """``element_vectors``: the fixed element table, when it is known already (a checkpoint
        holds it); by default it is read from the embedding's data file."""
        super().__init__()
        table = torch.from_numpy(element_table(cfg.embedding)) if element_vectors is None else element_vectors
        self.register_buffer("element_vectors", table)  # fixed, saved with the weights
        self.elem_proj = nn.Linear(table.shape[1], cfg.dim)
        self.elem_resid = nn.Embedding(MAX_Z + 1, cfg.dim, padding_idx=0)
        nn.init.zeros_(self.elem_resid.weight)
        self.frac_enc = FractionEncoding(cfg.dim, cfg.n_fourier)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.layers)])
        self.spg_emb = nn.Embedding(231, cfg.spg_dim)
        self.cs_emb = nn.Embedding(len(_CS), cfg.spg_dim)
        self.mix = nn.Sequential(
            nn.Linear(2 * cfg.dim + cfg.spg_dim, cfg.dim),
            nn.SiLU(),
            nn.Linear(cfg.dim, cfg.dim),
            nn.SiLU(),
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.register_buffer("spg_to_cs", torch.from_numpy(crystal_system_of_spg(np.arange(231))), persistent=False)

    def forward(self, z: torch.Tensor, frac: torch.Tensor, spg: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """``width``: the element count of the batch's widest row, when the caller knows it
        from host-side arrays (the padding columns beyond it are trimmed); by default it is
        read from ``z`` (which waits for a GPU to finish its queued work)."""
        if width is None:
            width = int((z > 0).sum(1).max().clamp_min(1))  # trim padding columns shared by the batch
        z, frac = z[:, :width], frac[:, :width]
        pad = z == 0
        x = self.elem_proj(self.element_vectors[z]) + self.elem_resid(z) + self.frac_enc(frac)
        bias = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, -1e9)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        w = frac.masked_fill(pad, 0.0).unsqueeze(-1)
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1e-8)
        xmax = x.masked_fill(pad.unsqueeze(-1), -1e4).amax(1)
        sym = self.spg_emb(spg) + self.cs_emb(self.spg_to_cs[spg])
        return self.mix(torch.cat([pooled, xmax, sym], dim=-1))


class Block(nn.Module):
    """Pre-norm self-attention block written out by hand: for sets of 2-10 elements
    plain einsum attention is faster on CPU than the fused kernels, and deterministic."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = torch.einsum("bqhc,bkhc->bhqk", q, k) * (d // self.heads) ** -0.5 + bias
        y = torch.einsum("bhqk,bkhc->bqhc", att.softmax(-1), v).reshape(b, n, d)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.n2(x)))


_CS = ("unknown", "triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


class Head(nn.Module):
    """``members`` independent MLPs, run together as grouped linear layers."""

    def __init__(self, dim: int, hidden: int, members: int, out: int):
        super().__init__()
        self.members, self.out = members, out
        self.w1 = nn.Parameter(torch.empty(members, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(members, hidden))
        self.w2 = nn.Parameter(torch.empty(members, hidden, out))
        self.b2 = nn.Parameter(torch.zeros(members, out))
        for w, fan_in in ((self.w1, dim), (self.w2, hidden)):
            nn.init.uniform_(w, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, members, out)
        a = F.silu(torch.einsum("bd,mdh->bmh", h, self.w1) + self.b1)
        return torch.einsum("bmh,mho->bmo", a, self.w2) + self.b2


HEAD_TYPES = ("mlp", "correction")


class CorrectionHead(nn.Module):
    """Correction learning (Δ-learning): ``base``, a frozen copy of another task's head
    (e.g. the DFT gap head), plus ``delta``, a learned head whose last layer starts at
    zero. The raw outputs add (for a hurdle head: the metal logit and the gap before its
    softplus), so training starts from the base task's answer and learns the difference;
    the base never trains (its parameters do not require gradients)."""

    def __init__(self, dim: int, hidden: int, members: int, out: int):
        super().__init__()
        self.base = Head(dim, hidden, members, out).requires_grad_(False)
        self.delta = Head(dim, hidden, members, out)
        nn.init.zeros_(self.delta.w2)
        nn.init.zeros_(self.delta.b2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h) + self.delta(h)


class MultiTaskModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tasks: list[TaskSpec], element_vectors: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.tasks = {t.name: t for t in tasks}
        self.encoder = Encoder(cfg, element_vectors)
        self.heads = nn.ModuleDict({t.name: self._make_head(t) for t in tasks})

    @classmethod
    def from_state(cls, cfg: ModelConfig, tasks: list[TaskSpec], state: dict[str, torch.Tensor]) -> "MultiTaskModel":
        """The model holding ``state`` (a state dict of exactly its shapes: RuntimeError
        otherwise). Its element table comes from ``state``, not from the data file."""
        model = cls(cfg, tasks, element_vectors=state.get(_ELEMENT_VECTORS))
        model.load_state_dict(state, strict=True, assign=True)
        return model

    def _make_head(self, task: TaskSpec) -> nn.Module:
        if task.head not in HEAD_TYPES:
            raise ValueError(f"task {task.name!r}: head must be one of {HEAD_TYPES}, got {task.head!r}")
        kind = CorrectionHead if task.head == "correction" else Head
        return kind(self.cfg.dim, self.cfg.head_hidden, self.cfg.members, 2 if task.kind == "hurdle" else 1)

    def add_task(self, task: TaskSpec) -> None:
        if task.name in self.tasks:
            raise ValueError(f"the model already has a task {task.name!r}")
        self.tasks[task.name] = task
        self.heads[task.name] = self._make_head(task)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def forward(
        self, z, frac, spg, tasks: list[str] | None = None, width: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Raw head outputs per task: (B, members, 1) regression, (B, members, 2) hurdle.
        ``width``: see :meth:`Encoder.forward`."""
        h = self.encoder(z, frac, spg, width=width)
        return {name: self.heads[name](h) for name in (tasks or list(self.heads))}

    @staticmethod
    def point(task: TaskSpec, raw: torch.Tensor) -> torch.Tensor:
        """(B, members) predictions in the task's units."""
        if task.kind == "hurdle":
            gap = F.softplus(raw[..., 1])
            return torch.where(torch.sigmoid(raw[..., 0]) > task.metal_cut, torch.zeros_like(gap), gap)
        return raw[..., 0] * task.std + task.mean

    @torch.no_grad()
    def predict_arrays(
        self, z: np.ndarray, frac: np.ndarray, spg: np.ndarray, tasks: list[str] | None = None, batch_size: int = 2048
    ) -> dict[str, np.ndarray]:
        """(n, members) predictions per task in the task's units, plus ``<task>_p_metal`` (metal
        probability) and ``<task>_positive`` (the gap if not a metal) for hurdle heads."""
        was = self.training
        self.eval()
        names = tasks or list(self.heads)
        out: dict[str, list[np.ndarray]] = {}
        device = next(self.parameters()).device
        # rows grouped by element count: a batch is only as wide as its widest row
        order = np.argsort((np.asarray(z) > 0).sum(1), kind="stable")
        for s in range(0, len(z), batch_size):
            rows = order[s : s + batch_size]
            zb = torch.as_tensor(z[rows], device=device)
            fb = torch.as_tensor(frac[rows], device=device)
            sb = torch.as_tensor(spg[rows], device=device)
            width = max(1, int((np.asarray(z[rows]) > 0).sum(1).max(initial=0)))  # (on the host)
            raw = self.forward(zb, fb, sb, names, width=width)
            for name in names:
                task = self.tasks[name]
                out.setdefault(name, []).append(self.point(task, raw[name]).cpu().numpy())
                if task.kind == "hurdle":
                    out.setdefault(f"{name}_p_metal", []).append(torch.sigmoid(raw[name][..., 0]).cpu().numpy())
                    out.setdefault(f"{name}_positive", []).append(F.softplus(raw[name][..., 1]).cpu().numpy())
        self.train(was)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {k: np.concatenate(v)[inverse] for k, v in out.items()}


_ELEMENT_VECTORS = "encoder.element_vectors"


def state_shapes(cfg: ModelConfig, tasks: list[TaskSpec]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the state dict of ``MultiTaskModel(cfg, tasks)``, from
    the settings alone: nothing is built or allocated, torch is not called (a checkpoint's
    weights are checked against this before loading). ValueError for an unknown
    embedding. tests/test_model_net.py checks it against built models."""
    d, s, ff = cfg.dim, cfg.spg_dim, cfg.ff_mult * cfg.dim
    out: dict[str, tuple[int, ...]] = {
        _ELEMENT_VECTORS: (MAX_Z + 1, embedding_dim(cfg.embedding)),
        "encoder.elem_proj.weight": (d, embedding_dim(cfg.embedding)),
        "encoder.elem_proj.bias": (d,),
        "encoder.elem_resid.weight": (MAX_Z + 1, d),
        "encoder.frac_enc.proj.weight": (d, 2 + 2 * cfg.n_fourier),
        "encoder.frac_enc.proj.bias": (d,),
        "encoder.spg_emb.weight": (231, s),
        "encoder.cs_emb.weight": (len(_CS), s),
        "encoder.mix.0.weight": (d, 2 * d + s),
        "encoder.mix.0.bias": (d,),
        "encoder.mix.2.weight": (d, d),
        "encoder.mix.2.bias": (d,),
        "encoder.norm.weight": (d,),
        "encoder.norm.bias": (d,),
    }
    for i in range(cfg.layers):
        block = {
            "n1.weight": (d,),
            "n1.bias": (d,),
            "n2.weight": (d,),
            "n2.bias": (d,),
            "qkv.weight": (3 * d, d),
            "qkv.bias": (3 * d,),
            "out.weight": (d, d),
            "out.bias": (d,),
            "ff.0.weight": (ff, d),
            "ff.0.bias": (ff,),
            "ff.2.weight": (d, ff),
            "ff.2.bias": (d,),
        }
        out.update({f"encoder.blocks.{i}.{k}": v for k, v in block.items()})
    m, h = cfg.members, cfg.head_hidden
    for t in tasks:
        n_out = 2 if t.kind == "hurdle" else 1
        head = {"w1": (m, d, h), "b1": (m, h), "w2": (m, h, n_out), "b2": (m, n_out)}
        parts = ("base.", "delta.") if t.head == "correction" else ("",)
        out.update({f"heads.{t.name}.{part}{k}": v for part in parts for k, v in head.items()})
    return out
