"""benchmarks/versions_ab.py loads another checkout beside this one and runs the same case on both."""
import os
import sys

import numpy as np

import minivit

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import versions_ab  # noqa: E402


def test_the_other_checkout_is_a_separate_package_that_computes_the_same(tmp_path):
    before = versions_ab.load_before(ROOT)           # this checkout again, as `minivit_before`
    assert before.__name__ == "minivit_before" and before is not minivit
    assert before.gelu_forward is not minivit.gelu_forward
    assert before.train.Engine is not minivit.train.Engine  # its submodules are its own too
    x = np.linspace(-5, 5, 101, dtype=np.float32)
    np.testing.assert_array_equal(before.gelu_forward(x, "exact", False)[0], minivit.gelu_forward(x, "exact", False)[0])


def test_every_case_builds_a_call_for_both_packages():
    before = versions_ab.load_before(ROOT)
    for name, make in versions_ab.cases().items():
        if name.startswith(("train-", "forward-vit", "eval-vit")):
            continue                                  # the training cases and vit-ti16: too slow to build and run here
        a, b = make(before), make(minivit)
        assert callable(a) and callable(b), name
        a(), b()


def test_cli_runs_a_case_and_refuses_a_path_without_minivit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["versions_ab.py", "--before", ROOT, "--case", "softmax-197", "--pairs", "4"])
    versions_ab.main()
    out = capsys.readouterr().out
    assert "softmax-197" in out and "median" in out and "quartiles" in out
    monkeypatch.setattr(sys, "argv", ["versions_ab.py", "--before", str(tmp_path), "--case", "softmax-197"])
    try:
        versions_ab.main()
    except SystemExit as e:
        assert "no minivit/__init__.py" in str(e)
    else:
        raise AssertionError("a folder without minivit/ must be refused")
