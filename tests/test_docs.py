"""The README's and the docs' Python examples run, as they are written (the way
torchjd's tests/doc does it): each file's ```python blocks run in order in one namespace,
in a fresh folder with a fresh matmtl cache (so ``matmtl.predict`` uses the shipped model)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "results.md")]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def test_the_pages_have_examples():
    assert blocks(ROOT / "README.md"), "the README shows the Python API"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page.name} example {i + 1}", "exec"), namespace)
        except Exception as exc:  # say which example failed, with its text
            raise AssertionError(f"{page.name} example {i + 1} failed: {type(exc).__name__}: {exc}\n{code}") from exc
