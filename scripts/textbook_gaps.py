"""The textbook crystals people try first, through the shipped model: each one's band gap
predicted from its structure (built here from the space group and the room-temperature
lattice constants) and from its formula, next to the measured gap.

    python scripts/textbook_gaps.py [--model NAME|RUN] [--json results/textbook_gaps.json]

Units: eV. The measured gaps are textbook values (room temperature; Kittel, Introduction to
Solid State Physics, and Madelung, Semiconductors: Data Handbook); several of these
compositions are in the shipped model's training data, so this is a sanity check of the
product, not a benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (space group, lattice (a, or a and c), species, fractional sites, measured gap in eV)
ZB = [[0, 0, 0], [0.25, 0.25, 0.25]]
RS = [[0, 0, 0], [0.5, 0.5, 0.5]]


def _wz(u: float) -> list:
    return [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, u]]


CRYSTALS = {
    "Si": ("Fd-3m", (5.431,), ["Si"], [[0, 0, 0]], 1.12),
    "C": ("Fd-3m", (3.567,), ["C"], [[0, 0, 0]], 5.47),
    "Ge": ("Fd-3m", (5.658,), ["Ge"], [[0, 0, 0]], 0.66),
    "GaAs": ("F-43m", (5.653,), ["Ga", "As"], ZB, 1.42),
    "InP": ("F-43m", (5.869,), ["In", "P"], ZB, 1.34),
    "CdTe": ("F-43m", (6.482,), ["Cd", "Te"], ZB, 1.50),
    "ZnS": ("F-43m", (5.409,), ["Zn", "S"], ZB, 3.68),
    "GaN": ("P6_3mc", (3.189, 5.185), ["Ga", "N"], _wz(0.377), 3.4),
    "AlN": ("P6_3mc", (3.112, 4.982), ["Al", "N"], _wz(0.382), 6.1),
    "ZnO": ("P6_3mc", (3.250, 5.207), ["Zn", "O"], _wz(0.382), 3.37),
    "NaCl": ("Fm-3m", (5.640,), ["Na", "Cl"], RS, 8.5),
    "MgO": ("Fm-3m", (4.212,), ["Mg", "O"], RS, 7.8),
    "LiF": ("Fm-3m", (4.026,), ["Li", "F"], RS, 13.6),
    "PbS": ("Fm-3m", (5.936,), ["Pb", "S"], RS, 0.41),
    # more zinc blendes, wurtzites and rock salts people try; the narrow-gap ones (InAs, InSb,
    # GaSb, InN) are metals in Materials Project's PBE, the case where a DFT metal gate errs
    "GaP": ("F-43m", (5.451,), ["Ga", "P"], ZB, 2.26),
    "AlAs": ("F-43m", (5.661,), ["Al", "As"], ZB, 2.16),
    "SiC": ("F-43m", (4.360,), ["Si", "C"], ZB, 2.36),
    "ZnSe": ("F-43m", (5.668,), ["Zn", "Se"], ZB, 2.7),
    "CdS": ("P6_3mc", (4.136, 6.714), ["Cd", "S"], _wz(0.377), 2.42),
    "GaSb": ("F-43m", (6.096,), ["Ga", "Sb"], ZB, 0.73),
    "InAs": ("F-43m", (6.058,), ["In", "As"], ZB, 0.35),
    "InSb": ("F-43m", (6.479,), ["In", "Sb"], ZB, 0.17),
    "InN": ("P6_3mc", (3.545, 5.703), ["In", "N"], _wz(0.377), 0.7),
    "KCl": ("Fm-3m", (6.293,), ["K", "Cl"], RS, 8.4),
    "PbSe": ("Fm-3m", (6.124,), ["Pb", "Se"], RS, 0.27),
    "Al": ("Fm-3m", (4.050,), ["Al"], [[0, 0, 0]], 0.0),
    "Cu": ("Fm-3m", (3.615,), ["Cu"], [[0, 0, 0]], 0.0),
}


def structure(name: str):
    from pymatgen.core import Lattice, Structure

    spg, lat, species, sites, _ = CRYSTALS[name]
    lattice = Lattice.cubic(lat[0]) if len(lat) == 1 else Lattice.hexagonal(*lat)
    return Structure.from_spacegroup(spg, lattice, species, sites)


def measure(model: str | None = None) -> dict:
    import numpy as np

    import matmtl
    from matmtl import zoo

    # the shipped model by name (not load_model()'s default, which prefers a run of your own)
    model = model or zoo.DEFAULT_MODEL
    names = list(CRYSTALS)
    df = matmtl.predict([structure(n) for n in names] + names, model=model)
    rows = {}
    for i, name in enumerate(names):
        s, f = df.iloc[i], df.iloc[len(names) + i]
        rows[name] = {
            "measured": CRYSTALS[name][4],
            "structure": round(float(s.gap_expt), 3),
            "structure_std": round(float(s.gap_expt_std), 3),
            "spg_num": int(s.spg_num),
            "formula": round(float(f.gap_expt), 3),
            "trust": s.trust or "",
        }
    err = {k: [abs(r[k] - r["measured"]) for r in rows.values()] for k in ("structure", "formula")}
    return {
        "unit": "eV",
        "model": str(model),
        "crystals": rows,
        "mae": {k: round(float(np.mean(v)), 3) for k, v in err.items()},
        "structure_better_or_equal": int(sum(a <= b + 1e-9 for a, b in zip(err["structure"], err["formula"]))),
        "about": __doc__.split("\n\n")[2].replace("\n", " "),
    }


def table(res: dict) -> str:
    lines = [
        "| crystal | space group | from structure (eV) | from formula (eV) | measured (eV) |",
        "|---|---|---|---|---|",
    ]
    for name, r in res["crystals"].items():
        lines.append(
            f"| {name} | {CRYSTALS[name][0]} ({r['spg_num']}) | {r['structure']:.2f} ± {r['structure_std']:.2f} | "
            f"{r['formula']:.2f} | {r['measured']:g} |"
        )
    lines.append(f"| MAE | | {res['mae']['structure']:.2f} | {res['mae']['formula']:.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="Shipped model name or run folder (default: the shipped one).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from matmtl.errors import MatmtlError

    try:
        res = measure(args.model)
    except MatmtlError as err:
        print(f"textbook_gaps: {err}", file=sys.stderr)
        return 2
    print(table(res), end="")
    if args.json:
        from matmtl.io import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
