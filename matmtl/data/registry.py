"""The named datasets matmtl knows: where each comes from, its columns, units,
licence and citation. `data/manifest.json` in the repository is generated from
this registry (`matmtl data manifest`) and a test keeps the two in sync."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import DataError

MATBENCH_CITATION = (
    "Dunn, Wang, Ganose, Dopp, Jain. Benchmarking materials property prediction methods: "
    "the Matbench test set and Automatminer reference algorithm. npj Comput. Mater. 6, 138 (2020)."
)
MP_CITATION = "Jain et al. The Materials Project. APL Materials 1, 011002 (2013)."
EXPT_GAP_CITATION = (
    "Zhuo, Mansouri Tehrani, Brgoch. Predicting the band gaps of inorganic solids by machine "
    "learning. J. Phys. Chem. Lett. 9, 1668 (2018)."
)
OQMD_CITATION = (
    "Kirklin, Saal, Meredig, Thompson, Doak, Aykol, Rühl, Wolverton. The Open Quantum Materials Database "
    "(OQMD): assessing the accuracy of DFT formation energies. npj Comput. Mater. 1, 15010 (2015)."
)
CRABNET_CITATION = (
    "Wang, Kauwe, Murdock, Sparks. Compositionally restricted attention-based network for materials "
    "property predictions. npj Comput. Mater. 7, 77 (2021)."
)
CGCNN_CITATION = (
    "Xie, Grossman. Crystal graph convolutional neural networks for an accurate and "
    "interpretable prediction of material properties. Phys. Rev. Lett. 120, 145301 (2018)."
)


@dataclass(frozen=True)
class Target:
    name: str  # canonical column name inside matmtl
    unit: str
    description: str
    nonnegative: bool = False  # band gaps: a negative value is an impossible target


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    input: str  # "composition" or "structure"
    targets: tuple[Target, ...]
    rows: int
    mirror_files: tuple[str, ...]  # paths relative to the offline mirror root
    matminer_name: str | None
    source: str
    licence: str
    citation: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    extra_columns: tuple[str, ...] = field(default=())
    # matbench's 5 official folds split it (KFold on its row order); False: no official
    # folds (a pretraining task holds out, instead, the compositions the other tasks hold out)
    official_folds: bool = True

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def to_manifest(self) -> dict:
        d = asdict(self)
        d["targets"] = [asdict(t) for t in self.targets]
        for key in ("mirror_files", "citation", "aliases", "extra_columns"):
            d[key] = list(d[key])
        return d


E_FORM = Target("e_form", "eV/atom", "DFT (PBE) formation energy per atom")
GAP_PBE = Target("gap_pbe", "eV", "DFT (PBE) band gap", nonnegative=True)
GAP_EXPT = Target("gap_expt", "eV", "experimental band gap", nonnegative=True)
GAP_OQMD = Target("gap_oqmd", "eV", "DFT (PBE) band gap from OQMD", nonnegative=True)

_ARTIFACTS = "matbench/scripts/artifacts"

REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mp",
            aliases=("mp_e_form", "matbench_mp_e_form"),
            description="Materials Project formation energies (matbench_mp_e_form), composition + symmetry",
            input="composition",
            targets=(E_FORM,),
            rows=132752,
            extra_columns=("spg_num", "crys_sys"),
            mirror_files=(f"{_ARTIFACTS}/matbench_mp_e_form.json.bz2",),
            matminer_name="matbench_mp_e_form",
            source="matbench v0.1 (materialsproject/matbench artifacts); Materials Project, April 2019",
            licence="CC-BY 4.0 (Materials Project data); matbench code MIT",
            citation=(MATBENCH_CITATION, MP_CITATION),
        ),
        DatasetSpec(
            name="mp_gap",
            aliases=("matbench_mp_gap",),
            description="Materials Project PBE band gaps (matbench_mp_gap), composition + symmetry",
            input="composition",
            targets=(GAP_PBE,),
            rows=106113,
            extra_columns=("spg_num", "crys_sys"),
            mirror_files=(f"{_ARTIFACTS}/matbench_mp_gap.json.bz2",),
            matminer_name="matbench_mp_gap",
            source="matbench v0.1 (materialsproject/matbench artifacts); Materials Project",
            licence="CC-BY 4.0 (Materials Project data); matbench code MIT",
            citation=(MATBENCH_CITATION, MP_CITATION),
        ),
        DatasetSpec(
            name="expt_gap",
            aliases=("matbench_expt_gap",),
            description="Experimental band gaps of inorganic solids (matbench_expt_gap), 53% metals",
            input="composition",
            targets=(GAP_EXPT,),
            rows=4604,
            mirror_files=(f"{_ARTIFACTS}/matbench_expt_gap.json.bz2",),
            matminer_name="matbench_expt_gap",
            source="matbench v0.1 (materialsproject/matbench artifacts); Zhuo et al. 2018 SI",
            licence="matbench code MIT; data from the cited publication",
            citation=(MATBENCH_CITATION, EXPT_GAP_CITATION),
        ),
        DatasetSpec(
            name="oqmd_gap",
            aliases=("oqmd_bandgap",),
            description="OQMD PBE band gaps (CrabNet's OQMD_Bandgap benchmark set, 93% metals), composition only",
            input="composition",
            targets=(GAP_OQMD,),
            rows=341608,
            mirror_files=tuple(
                f"crabnet/data/benchmark_data/OQMD_Bandgap/{part}.csv" for part in ("train", "val", "test")
            ),
            matminer_name=None,
            source="anthony-wang/CrabNet benchmark data (commit 457b4d4), from the OQMD; CrabNet's "
            "train/val/test files read in that order",
            licence="OQMD data CC-BY 4.0; CrabNet repository MIT",
            citation=(OQMD_CITATION, CRABNET_CITATION),
            official_folds=False,
        ),
        DatasetSpec(
            name="mp_cgcnn",
            aliases=("cgcnn",),
            description="36,737 Materials Project crystal structures (CIF) with formation energies (CGCNN set)",
            input="structure",
            targets=(E_FORM,),
            rows=36737,
            extra_columns=("mp_id", "cif"),
            mirror_files=(
                "crysxpp/data/cifs.tar.gz",
                "crysxpp/data/id_prop.csv",
                "crysxpp/data/material_id_hash.csv",
            ),
            matminer_name=None,
            source="kdmsit/crysxpp (the CGCNN Materials Project set), commit b12e52b8",
            licence="CC-BY 4.0 (Materials Project data); repository MIT",
            citation=(CGCNN_CITATION, MP_CITATION),
        ),
    )
}

_ALIASES = {alias: spec.name for spec in REGISTRY.values() for alias in (spec.name, *spec.aliases)}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a named dataset (aliases accepted, case-insensitive)."""
    key = name.strip().lower()
    if key not in _ALIASES:
        known = ", ".join(sorted(REGISTRY))
        raise DataError(f"unknown dataset {name!r}; known datasets: {known} (or a path to a CSV/JSON file)")
    return REGISTRY[_ALIASES[key]]


def manifest() -> dict:
    """Every dataset's source, columns, units, licence and citation, as JSON-ready data."""
    return {
        "about": "Generated by `matmtl data manifest`; the data themselves are never stored in this repository.",
        "datasets": [spec.to_manifest() for spec in REGISTRY.values()],
    }
