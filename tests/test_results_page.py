"""The figures of docs/ that quote raw files are rendered from them (benchmarks/render_results.py): the page
and the script agree, every block the pages mark is one the script renders, and a changed raw figure
makes the check fail."""
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import render_results  # noqa: E402


@pytest.mark.parametrize("page", render_results.PAGES, ids=lambda p: p.name)
def test_every_generated_block_is_what_the_raw_files_give(page):
    stale = render_results.differing_blocks(page.read_text())
    assert not stale, f"{page.name}: {stale} differ from their raw files; run python benchmarks/render_results.py"


def test_the_results_page_renders_its_headline_and_tables():
    text = (ROOT / "docs" / "results.md").read_text()
    names = {m.group("name") for m in render_results.BLOCK.finditer(text)}
    assert {"headlines", "hour-fifth", "hour-peer", "sweep-budget", "cpu-step-variants", "cpu-step-final",
            "restructure"} <= names
    assert text.index("<!-- begin generated: headlines -->") < text.index("\n## ")   # the short table comes first


def test_every_block_names_its_machine():
    for name, render in render_results.BLOCKS.items():
        assert "Xeon" in render() or "EPYC" in render() or "machine" in render().lower(), name


def test_a_changed_raw_figure_is_caught(tmp_path, monkeypatch):
    raw = tmp_path / "results"
    shutil.copytree(render_results.RAW, raw)
    page = (ROOT / "docs" / "results.md").read_text()
    monkeypatch.setattr(render_results, "RAW", raw)
    assert not render_results.differing_blocks(page)
    f = raw / "cpu_step_cifar-small_train_mkl.json"
    data = json.loads(f.read_text())
    data["rounds"][0]["ratio"] = 0.5                     # one round's ratio changes: the range must follow
    f.write_text(json.dumps(data))
    assert "cpu-step-variants" in render_results.differing_blocks(page)


def test_an_unknown_block_name_is_an_error():
    with pytest.raises(KeyError, match="does not know"):
        render_results.render_page("<!-- begin generated: no-such-block -->\nx\n<!-- end generated: no-such-block -->")
