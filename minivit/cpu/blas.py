"""Matrix products by Intel's MKL, called directly, for the dense layers and attention on a CPU.

NumPy's `@` calls the BLAS NumPy was built with: OpenBLAS in NumPy's wheels. On the dense layers'
shapes (a shard's 2,000 tokens times 64-768 features) MKL reached more of a core's peak than OpenBLAS on
an AVX-512 Intel Xeon (benchmarks/blas_gflops.py; the figures, with their machine, in docs/cpu_kernels.md). MKL ships as a Python wheel (`pip install mkl`,
part of `minivit[mkl]`) holding the shared library libmkl_rt; this module loads it with ctypes and
calls its GEMM, C = alpha op(A) op(B), on NumPy arrays' memory. The products themselves are the
same as NumPy's; only the library that multiplies differs.

MKL is asked to run sequentially (one thread per call): the trainer already gives each core its own
shard (minivit/train/engine.py), as with OpenBLAS limited to one thread.

Which BLAS is chosen by measurement, per CPU vendor (MKL_VENDORS below): MKL on Intel CPUs where it loads,
NumPy's own elsewhere. Switches: MINIVIT_BLAS=numpy (or openblas) keeps NumPy's own BLAS even where MKL is
installed, MINIVIT_BLAS=mkl uses MKL on any CPU, auto (or unset) follows the vendor rule, anything else is
refused; MINIVIT_FUSED=0 turns
this off with the other CPU kernels. Without the mkl wheel `available()` is False and nothing changes.
Imports nothing of minivit.
"""
import ctypes
import ctypes.util
import functools
import glob
import os
import re
import sys

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112     # CBLAS_LAYOUT, CBLAS_TRANSPOSE
_MKL_THREADING_SEQUENTIAL, _MKL_INTERFACE_LP64 = 1, 0
_MKL_CBWR_AUTO, _MKL_CBWR_STRICT, _MKL_CBWR_SUCCESS = 2, 0x10000, 0
_INT_MAX = 2 ** 31 - 1                            # MKL_INT in the LP64 interface
# Where NumPy's own BLAS was as fast or faster, measured on this project's models (the figures, with their
# machine, in docs/cpu_kernels.md):
# - a stack of products each under SMALL_PRODUCT multiply-adds: NumPy's loop over OpenBLAS's small-matrix
#   kernels beat MKL's batch on cifar's attention (65 x 65 x 32), where MKL's won on vit-ti16's
#   (197 x 197 x 64) (benchmarks/cpu_attention_blas.py);
# - a single product with a side under SMALL_SIDE: cifar-tiny's dense layers (64 and 128 features) ran
#   a training step slower with MKL's products, cifar-small's and vit-ti16's faster
#   (benchmarks/compare_step.py --against openblas).
SMALL_PRODUCT = 1 << 20
# Where MKL's products are used by default, by CPU vendor, as measured with `compare_step.py --against openblas`
# (docs/cpu_kernels.md, "Which BLAS, by CPU"): on Intel's Xeons they ran the step faster; on AMD EPYCs slower
# (a Zen 3 on vit-ti16; a Zen 4 on every case where MKL takes products). MINIVIT_BLAS=mkl uses MKL on any CPU.
MKL_VENDORS = ("GenuineIntel",)
SMALL_SIDE = 128
_lib = None
_enabled = None   # use_mkl's choice; None: MINIVIT_BLAS and the vendor rule decide


def _candidates():
    """Where the mkl wheel (or a system MKL) puts libmkl_rt."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield from sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
        yield from glob.glob(os.path.join(prefix, "Library", "bin", "mkl_rt*.dll"))
    found = ctypes.util.find_library("mkl_rt")
    if found:
        yield found


def wanted():
    """Whether MKL's products are wanted here: use_mkl's choice, else MINIVIT_BLAS, else the vendor rule."""
    if _enabled is not None:
        return _enabled
    choice = os.environ.get("MINIVIT_BLAS", "").strip().lower()
    if choice not in ("", "auto", "mkl", "numpy", "openblas"):
        raise ValueError(f"MINIVIT_BLAS={os.environ['MINIVIT_BLAS']!r}: use auto (MKL on Intel CPUs where it loads, "
                         "the default), mkl (MKL on any CPU) or numpy (NumPy's own BLAS; openblas means the same)")
    if choice in ("numpy", "openblas"):
        return False
    return choice == "mkl" or cpu_vendor() in MKL_VENDORS


def _load():
    """libmkl_rt with its GEMMs typed, or False when there is none or it cannot be set up as needed."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            # Before any other MKL call, each returning the setting in force: 32-bit integers (the
            # argument types below), one thread per call (the trainer's shards use the cores), and
            # strict conditional numerical reproducibility: a product gives the same bits whatever its
            # arrays' alignment, so a resumed run ends exactly where an uninterrupted one does. Where
            # MKL was already set up otherwise in this process (a NumPy linked to MKL), it is not used.
            if (lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64) != _MKL_INTERFACE_LP64
                    or lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL) != _MKL_THREADING_SEQUENTIAL
                    or lib.MKL_CBWR_Set(_MKL_CBWR_AUTO | _MKL_CBWR_STRICT) != _MKL_CBWR_SUCCESS):
                continue
            i, p = ctypes.c_int, ctypes.c_void_p                     # MKL_INT is 32-bit in the LP64 interface
            for prefix, scalar in (("s", ctypes.c_float), ("d", ctypes.c_double)):
                gemm = getattr(lib, f"cblas_{prefix}gemm")
                gemm.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
                strided = getattr(lib, f"cblas_{prefix}gemm_batch_strided")
                strided.argtypes = [i, i, i, i, i, i, scalar, p, i, i, p, i, i, scalar, p, i, i, i]
                group = getattr(lib, f"cblas_{prefix}gemm_batch")      # the pointer-array ("group") form
                group.argtypes = [i] + [p] * 13 + [i, p]
                gemm.restype = strided.restype = group.restype = None
            lib.MKL_Get_Version_String.argtypes = [ctypes.c_char_p, ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return False


@functools.lru_cache(maxsize=None)
def cpu_vendor():
    """The CPU's vendor string ('GenuineIntel', 'AuthenticAMD', ...) from /proc/cpuinfo, or None. Read once:
    every product asks (library() -> wanted()), and the CPU does not change under a running process."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def use_mkl(on):
    """Turn MKL's products on (where it loads, whatever the CPU) or off for this process; None: back to the
    default (MINIVIT_BLAS, then the vendor rule)."""
    global _enabled
    _enabled = None if on is None else bool(on)


def library():
    """The loaded libmkl_rt, or None (not installed, not usable, or turned off)."""
    global _lib
    if not wanted():
        return None
    if _lib is None:
        _lib = _load()            # once: MKL's settings above cannot be made again after its first call
    return _lib or None


def available():
    return library() is not None


def version():
    """'MKL 2026.2' (from MKL's own version string), or None when it is not loaded."""
    lib = library()
    if lib is None:
        return None
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, len(buf))
    text = buf.value.decode(errors="replace")
    found = re.search(r"Version ([0-9][0-9.]*)", text)
    return f"MKL {found.group(1) if found else text.strip()}"


def _operand(a):
    """How GEMM reads the row-major (..., r, c) array a: (transposed?, leading dimension), or None.

    A matrix whose columns have unit stride is read as it is, with its row stride as the leading
    dimension; one whose rows have unit stride (a transposed view, as w.T) is read as the transpose
    of a row-major matrix. Anything else needs a copy first."""
    size = a.itemsize
    r, c = a.shape[-2:]
    rs, cs = a.strides[-2:]
    if (cs == size or c == 1) and rs % size == 0 and rs // size >= max(1, c):
        return False, rs // size if r > 1 else max(1, c)
    if (rs == size or r == 1) and cs % size == 0 and cs // size >= max(1, r):
        return True, cs // size if c > 1 else max(1, r)
    return None


def gemm_batched(a, b, c, trans_a=False, trans_b=False, alpha=1.0):
    """c[i] = alpha op(a[i]) op(b[i]) for i over the leading axes: the textbook `c[...] = alpha * a @ b`.

    a, b, c: arrays (..., rows, cols) of one dtype (float32 or float64) with the same leading shape,
    whose matrices GEMM can read in place (_operand; matmul copies those it cannot); c's last axis has
    unit stride. The trans flags say the operand is read transposed. A matrix may be a view with any
    row stride (the heads of a (B, N, 3, H, d) qkv array). One call to MKL whatever the stack: its
    GEMM for a single matrix, its strided batch for one leading axis, and for more (the (B, H) of
    attention, whose strides do not merge) its batch of pointers, one per matrix, computed by NumPy
    from the strides. A call per matrix would hold Python's lock for longer than a small product
    takes, and the trainer's two threads would wait on each other.

    Raises ValueError, before calling MKL, for what its 32-bit integers cannot hold or what it would
    refuse (MKL reports a bad argument on stderr only, and leaves c unwritten)."""
    lib = library()
    single = a.dtype == np.float32
    (ta, lda), (tb, ldb) = _operand(a), _operand(b)
    ldc = c.strides[-2] // c.itemsize if c.shape[-2] > 1 else max(1, c.shape[-1])
    ta, tb = ta != trans_a, tb != trans_b                        # a transposed view, transposed again, is read as is
    m, n = c.shape[-2:]
    k = a.shape[-2] if trans_a else a.shape[-1]
    flags = (_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS)
    lead = c.shape[:-2]
    batch = int(np.prod(lead)) if lead else 1
    if not (c.strides[-1] == c.itemsize or n == 1) or ldc < max(1, n):
        raise ValueError("c's rows must have unit stride")
    _fits(m, n, k, lda, ldb, ldc, ldc * m, batch)
    p = lambda x: x.ctypes.data
    if batch == 1:                                               # one matrix (the stack's, if any)
        f = lib.cblas_sgemm if single else lib.cblas_dgemm
        f(*flags, m, n, k, alpha, p(a), lda, p(b), ldb, 0.0, p(c), ldc)
    elif len(lead) == 1:
        sa, sb, sc = (x.strides[0] // x.itemsize for x in (a, b, c))
        if sc < ldc * m:
            raise ValueError("c's matrices overlap")
        _fits(sa, sb, sc)
        f = lib.cblas_sgemm_batch_strided if single else lib.cblas_dgemm_batch_strided
        f(*flags, m, n, k, alpha, p(a), lda, sa, p(b), ldb, sb, 0.0, p(c), ldc, sc, batch)
    else:
        pointers = [p(x) + _offsets(x.strides[:-2], lead) for x in (a, b, c)]
        ints = np.array([*flags[1:], m, n, k, lda, ldb, ldc, batch], dtype=np.int32)
        scalars = np.array([alpha, 0.0], dtype=a.dtype)
        f = lib.cblas_sgemm_batch if single else lib.cblas_dgemm_batch
        at = lambda i: p(ints) + 4 * i
        f(_ROW_MAJOR, at(0), at(1), at(2), at(3), at(4), p(scalars), p(pointers[0]), at(5), p(pointers[1]),
          at(6), p(scalars) + scalars.itemsize, p(pointers[2]), at(7), 1, at(8))


def _fits(*values):
    """Raise ValueError unless every value is an MKL_INT MKL accepts here (0 to 2^31 - 1)."""
    if not all(0 <= v <= _INT_MAX for v in values):
        raise ValueError(f"outside MKL's 32-bit integers: {values}")


def _offsets(strides, shape):
    """The byte offset of each matrix of a stack with these leading strides and shape, as uint64, in C order."""
    off = np.zeros(shape, dtype=np.int64)
    for axis, (stride, size) in enumerate(zip(strides, shape)):
        view = [1] * len(shape)
        view[axis] = size
        off += (np.arange(size, dtype=np.int64) * stride).reshape(view)
    return off.reshape(-1).astype(np.uint64)


def _readable(x):
    """x itself if GEMM can read its matrices in place and the stack's leading axes step forward by whole
    elements (axes of length 1 do not step), else a C-ordered copy."""
    steps = all(s >= 0 and s % x.itemsize == 0 for s, size in zip(x.strides[:-2], x.shape[:-2]) if size > 1)
    return x if steps and _operand(x) is not None else np.array(x, order="C", copy=True)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) by MKL: 2-D matrices, or stacks (..., r, c) of equal leading shape.

    Falls back to NumPy's `@` for what it does not cover (broadcast stacks, mixed or other dtypes,
    empty arrays) and for small products (SMALL_PRODUCT, SMALL_SIDE), so it is always the same product."""
    A = a.swapaxes(-1, -2) if trans_a else a
    B = b.swapaxes(-1, -2) if trans_b else b
    if (a.ndim < 2 or a.shape[:-2] != b.shape[:-2] or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64)
            or A.shape[-1] != B.shape[-2] or 0 in A.shape or 0 in B.shape or library() is None):
        return A @ B
    m, k, n = A.shape[-2], A.shape[-1], B.shape[-1]
    if (m * k * n < SMALL_PRODUCT) if a.ndim > 2 else (min(m, k, n) < SMALL_SIDE):
        return A @ B                                   # small products: NumPy's BLAS was as fast (above)
    a, b = _readable(a), _readable(b)
    c = np.empty(A.shape[:-1] + (B.shape[-1],), dtype=a.dtype)
    try:
        gemm_batched(a, b, c, trans_a, trans_b)
    except ValueError:                                 # too large for MKL's 32-bit integers
        return A @ B
    return c
