"""The layers are the textbook formulas, and the few speed devices left beside them keep the numbers.

With the kernels off (MINIVIT_FUSED=0's path) a layer runs its own lines: here they are checked against
the formulas written out once more by hand, in float64 to 1e-12 (tests/test_cpu_kernels.py then pins
each CPU kernel to these lines). The malloc tuning (train/mallopt.py) against page-fault counts, and the attention cache's one copy of its output.
"""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import erf

import minivit as mv
from helpers import kernels, rel_error


@pytest.fixture(autouse=True)
def layer_lines():
    """The layers' own lines: the kernels off."""
    with kernels(False):
        yield


rng = np.random.default_rng(0)
TIGHT = 1e-12


def randn(*shape):
    return rng.standard_normal(shape)


def test_softmax_and_attention_are_the_formulas():
    x = randn(3, 5, 8) * 2 + 1
    s = np.exp(x - x.max(axis=-1, keepdims=True))
    assert rel_error(mv.softmax(x), s / s.sum(axis=-1, keepdims=True)) < TIGHT
    assert rel_error(mv.softmax(x).sum(axis=-1), np.ones((3, 5))) < TIGHT
    wide = x * 100.0                                            # logits far apart: still finite, still rows of 1
    assert np.isfinite(mv.softmax(wide)).all() and rel_error(mv.softmax(wide).sum(-1), np.ones((3, 5))) < TIGHT
    q, k, v = randn(2, 4, 3), randn(2, 4, 3), randn(2, 4, 3)
    a = np.exp(q @ k.swapaxes(-1, -2) / math.sqrt(3))
    out, cache = mv.attention_forward(q, k, v)
    assert rel_error(out, (a / a.sum(-1, keepdims=True)) @ v) < TIGHT
    assert cache.probs is cache.probs_dropped and cache.mask is None


@pytest.mark.parametrize("approximate", ["exact", "tanh"])
def test_gelu_is_the_formula_and_caches_its_derivative(approximate):
    x, b = randn(3, 5, 8) * 2, randn(8)
    y, d = mv.gelu_forward(x, approximate, bias=b)
    h = x + b
    if approximate == "exact":
        want = h * 0.5 * (1 + erf(h / math.sqrt(2)))
    else:
        want = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    assert rel_error(y, want) < TIGHT
    e = 1e-6                                                    # the cached derivative is the formula's
    fd = (mv.gelu_forward(h + e, approximate)[0] - mv.gelu_forward(h - e, approximate)[0]) / (2 * e)
    assert rel_error(d, fd) < 1e-8
    assert mv.gelu_forward(x, approximate, keep_cache=False, bias=b)[1] is None


def test_layernorm_is_the_formula():
    x, w, b = randn(3, 5, 8) * 3 + 1, randn(8), randn(8)
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    y, cache = mv.layernorm_forward(x, w, b)
    assert rel_error(y, z * w + b) < TIGHT
    dy = randn(*x.shape)
    g = dy * w                                                  # docs/derivations/layernorm.md
    want = (g - g.mean(-1, keepdims=True) - z * (g * z).mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    dx, dw, db = mv.layernorm_backward(dy, cache)
    assert rel_error(dx, want) < TIGHT
    assert rel_error(dw, (dy * z).sum(axis=(0, 1))) < TIGHT and rel_error(db, dy.sum(axis=(0, 1))) < TIGHT


def test_keep_freed_memory_stops_page_faults():
    """Freeing and re-allocating an 8 MB array faults in every page again under glibc's
    defaults (mmap/munmap per array); after keep_freed_memory() the heap keeps and reuses it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc only")
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from minivit.train.mallopt import keep_freed_memory
        if sys.argv[1] == "tuned":
            assert keep_freed_memory() and keep_freed_memory()  # idempotent
        np.ones(2 ** 21, np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(40):
            a = np.ones(2 ** 21, np.float32)  # 8 MB, written in full
            del a
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True, capture_output=True,
                                       text=True).stdout) for mode in ("default", "tuned")}
    # At least the four 2 MiB pages of each array (NumPy asks for huge pages for large arrays;
    # with 4 KiB pages it is 2048 per array).
    assert faults["default"] >= 40 * 4, faults
    assert faults["tuned"] < faults["default"] / 10, faults


def test_mhsa_cache_keeps_one_copy_of_the_attention_output():
    """The attention output is needed in backward (the rowsum identity) and, heads concatenated,
    as the projection's input; the cache holds it once, as a view of the projection's input.
    q, k and v are kept as views of the qkv projection's output, q without the scale."""
    B, N, H, d = 2, 5, 3, 4
    D = H * d
    x, wq, bq, wp, bp = randn(B, N, D), randn(D, 3 * D), randn(3 * D), randn(D, D), randn(D)
    _, (c_qkv, c_att, c_proj, heads, c_rel) = mv.mhsa_forward(x, wq, bq, wp, bp, H)
    out, ctx = c_att.out, c_proj[0]                     # (B, H, N, d) and (B, N, D)
    assert np.shares_memory(out, ctx)
    np.testing.assert_array_equal(out, ctx.reshape(B, N, H, d).transpose(0, 2, 1, 3))
    assert rel_error(out, c_att.probs @ c_att.v) < TIGHT   # still the attention output
    qkv = (x @ wq + bq).reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)
    for a, want in zip((c_att.q, c_att.k, c_att.v), qkv):  # q unscaled: views of the projection's output
        assert not a.flags.owndata and rel_error(a, want) < TIGHT
