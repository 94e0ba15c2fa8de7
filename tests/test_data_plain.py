"""The plain-formula fast path gives exactly what the pymatgen path gives, or steps aside."""

import numpy as np
import pytest

from matmtl.data.featurize import Featurizer
from matmtl.data.periodic import Z_OF
from matmtl.data.plain import plain_fractions


def general(x: str) -> list[tuple[int, float]]:
    return Featurizer()._read_general(x, "test")[0]


def same_row(fast, slow) -> bool:
    """Same elements and the same float32 fractions (what a featurized row stores)."""
    return [z for z, _ in fast] == [z for z, _ in slow] and np.array_equal(
        np.array([f for _, f in fast], np.float32), np.array([f for _, f in slow], np.float32)
    )


def random_formulas(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    symbols = list(Z_OF)[:94]
    out = []
    for _ in range(n):
        els = rng.choice(symbols, size=rng.integers(1, 9), replace=False)
        if rng.random() < 0.5:  # MP style, every amount written, some decimal
            amounts = [
                f"{rng.integers(1, 40)}" if rng.random() < 0.6 else f"{rng.uniform(0.001, 30):.{rng.integers(1, 6)}f}"
                for _ in els
            ]
            out.append(" ".join(f"{e}{a}" for e, a in zip(els, amounts)))
        else:  # compact, integer amounts, some left out
            out.append("".join(e + (str(rng.integers(2, 60)) if rng.random() < 0.6 else "") for e in els))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_random_plain_formulas_match_the_general_path(seed):
    for x in random_formulas(400, seed):
        fast = plain_fractions(x)
        assert fast is not None, x
        assert same_row(fast, general(x)), x


def test_real_tables_match(mirror):
    from matmtl.data.dataset import _read_named
    from matmtl.data.registry import get_spec

    formulas = []
    for name in ("expt_gap", "mp"):
        raw, _ = _read_named(get_spec(name), str(mirror), "auto")
        formulas += raw["formula"].astype(str).tolist()[:1500]
    taken = 0
    for x in formulas:
        fast = plain_fractions(x)
        if fast is not None:
            taken += 1
            assert same_row(fast, general(x)), x
    assert taken > 2500  # nearly every row of both tables is plain


@pytest.mark.parametrize(
    "text",
    [
        "Fe(OH)3",  # brackets
        "CuSO4.5H2O",  # hydrate
        "CuSO4·5H2O",
        "Fe0.5H2O",  # ambiguous: refused by the general path
        "Li0.5CoO2",  # a dot in compact form
        "FeFe2O3",  # repeated element
        "Xx2O",  # unknown symbol
        "Fe0 O1",  # zero amount
        "Fe1 O0.0000001",  # below MIN_FRACTION
        "Fe1 O0.123456789",  # more than 8 decimals
        "2H2O",  # leading count
        "Fe₂O₃",  # subscripts
        " GaN",  # stray space
        "Ga1  N1",  # double space
        "DMSO",  # a named solvent
        "",
    ],
)
def test_other_shapes_take_the_general_path(text):
    assert plain_fractions(text) is None


def test_featurizer_rows_do_not_depend_on_the_path():
    inputs = ["GaN", "Fe2O3", "Li0.5 Co1 O2", "Fe(OH)3", "CuSO4·5H2O"]
    feats = Featurizer(cache=False)(inputs)
    for row, x in enumerate(inputs):
        pairs = general(x)
        assert feats.z[row, : len(pairs)].tolist() == [p[0] for p in pairs]
        assert np.array_equal(feats.frac[row, : len(pairs)], np.array([p[1] for p in pairs], dtype=np.float32))
    # the general path's errors still reach the user, naming the input
    with pytest.raises(Exception, match="Fe0.5H2O"):
        Featurizer(cache=False)(["GaN", "Fe0.5H2O"])


@pytest.mark.parametrize("text", ["OgO2", "Og1 O2", "Rf(OH)4"])
def test_elements_no_model_embeds_are_refused_on_both_paths(text):
    from matmtl.errors import DataError

    with pytest.raises(DataError, match=r"input 1: element\(s\) (Og|Rf) beyond the 103 elements"):
        Featurizer(cache=False)(["GaN", text])
