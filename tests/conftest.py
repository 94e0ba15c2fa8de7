from pathlib import Path

import pytest

from matmtl.data.sources import mirror_dirs


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own matmtl cache, so no test sees another's files or the user's."""
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path_factory.mktemp("matmtl-cache")))
    monkeypatch.delenv("MATMTL_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline dataset mirror (../shared/data); tests that need it fail loudly without it."""
    dirs = mirror_dirs()
    if not dirs:
        pytest.fail("offline dataset mirror ../shared/data not found beside the repository")
    return dirs[0]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """One tiny pretraining (e_form + gap_pbe, 400 rows, mp fold 0 held out) shared by the
    tests that fine-tune from it; they only read its run folder."""
    from _tiny import tiny_pretrain

    from matmtl.train import pretrain

    root = tmp_path_factory.mktemp("pre")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root / "cache"))
        return pretrain(tiny_pretrain(["e_form", "gap_pbe"], max_rows=400), root / "run", progress=False)
