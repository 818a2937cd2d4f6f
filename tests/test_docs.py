"""The docs' code snippets run, and the docs link to files that exist."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
SNIPPETS = [(p, i, code) for p in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), re.S))]


def test_there_are_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("page,index,code", SNIPPETS,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs(page, index, code):
    exec(compile(code, f"{page.name} snippet {index}", "exec"), {"__name__": "__snippet__"})


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_exist(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_api_names_exist():
    import minivit
    for name in ["ViTConfig", "init_params", "forward", "backward", "cross_entropy", "AdamW", "to_timm",
                 "from_timm", "use_backend", "SGD", "clip_grad_norm", "warmup_decay", "count_params"]:
        assert hasattr(minivit, name), name
        assert f"`{name}" in (ROOT / "README.md").read_text(), name


TEXTS = PAGES + sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "minivit").rglob("*.py")) \
    + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("page", TEXTS, ids=[str(p.relative_to(ROOT)) for p in TEXTS])
def test_file_paths_in_the_text_exist(page):
    """Every minivit/....py path that docs, notebooks, comments and docstrings name is a file of the
    package: a move that forgets a mention fails here. (Raw results in benchmarks/results/ keep the
    paths of the tree that made them.)"""
    for path in set(re.findall(r"minivit/[\w/]+\.py", page.read_text())):
        assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} names {path}, which does not exist"
