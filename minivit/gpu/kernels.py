"""Fused CUDA kernels for the CuPy backend.

On a GPU a small ViT is launch-bound: every NumPy-style line (`x - mean`, `exp`, `/ sum`)
is one kernel launch, 10-20 microseconds of host time, whatever the size of the array.
LayerNorm written that way is eight launches and eight passes over memory; AdamW is ten
launches per parameter tensor. Each kernel here does one such layer in one launch, and
must equal the NumPy function named beside it, which stays the definition
(tests/test_cuda_kernels.py compares them in float32 and float64 on the GPU).

The layers call these automatically when their inputs are CuPy arrays (see `fused` in
minivit/backend.py); MINIVIT_FUSED=0 turns them off, to measure what they buy.

Row kernels give one 32-thread warp to each row (a token's D features, an attention row's N
keys, a logit row's K classes): each lane takes every 32nd element, and the warp adds its
lanes' partial sums with register shuffles, so a row costs one read for each statistic and
one write. Multi-tensor kernels (AdamW, the gradient norm) treat all parameter tensors as
one flat range of elements, given as a table of pointers, so one launch serves them all.
"""
import numpy as np

_SOURCE = r"""
#define WARP 32

template <typename T> __device__ T warp_sum(T v) {           // every lane gets the sum of all 32
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ T warp_max(T v) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
template <typename T> __device__ T quiet_nan();
template <> __device__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// The warp of this thread owns row `row`; lane is the thread's place in its warp.
#define ROW_AND_LANE                                                               \
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP; \
    int lane = threadIdx.x % WARP;                                                 \
    if (row >= rows) return;

// minivit.norm.layernorm_forward: y = xhat w + b, xhat = (x - mean) rstd, rstd = 1 / sqrt(var + eps)
template <typename T>
__global__ void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* xhat, T* rstd,
                                  long long rows, int D, T eps) {
    ROW_AND_LANE
    const T* xr = x + row * D;
    T s = 0;
    for (int j = lane; j < D; j += WARP) s += xr[j];
    T mean = warp_sum(s) / D;
    T ss = 0;                                           // centred second pass, as NumPy's
    for (int j = lane; j < D; j += WARP) { T c = xr[j] - mean; ss += c * c; }
    T r = T(1) / sqrt(warp_sum(ss) / D + eps);
    for (int j = lane; j < D; j += WARP) {
        T h = (xr[j] - mean) * r;
        xhat[row * D + j] = h;
        y[row * D + j] = h * w[j] + b[j];
    }
    if (lane == 0) rstd[row] = r;
}

// minivit.norm.layernorm_backward, the dx part: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w
template <typename T>
__global__ void layernorm_backward_dx(const T* dy, const T* xhat, const T* rstd, const T* w, T* dx,
                                      long long rows, int D) {
    ROW_AND_LANE
    const T* dyr = dy + row * D;
    const T* xr = xhat + row * D;
    T s1 = 0, s2 = 0;
    for (int j = lane; j < D; j += WARP) { T g = dyr[j] * w[j]; s1 += g; s2 += g * xr[j]; }
    T m1 = warp_sum(s1) / D, m2 = warp_sum(s2) / D, r = rstd[row];
    for (int j = lane; j < D; j += WARP) dx[row * D + j] = (dyr[j] * w[j] - m1 - xr[j] * m2) * r;
}

// The dw, db part: column sums of dy xhat and dy, over one chunk of rows per blockIdx.y.
// partial (chunks, 2, D) is then summed over its chunks (a second, small reduction).
template <typename T>
__global__ void layernorm_backward_dwdb(const T* dy, const T* xhat, T* partial, long long rows, int D,
                                        long long rows_per_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;     // one column per thread: coalesced reads
    if (j >= D) return;
    long long r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
    T a = 0, c = 0;
    for (long long r = r0; r < r1; ++r) { T g = dy[r * D + j]; a += g * xhat[r * D + j]; c += g; }
    partial[(2 * (long long)blockIdx.y) * D + j] = a;
    partial[(2 * (long long)blockIdx.y + 1) * D + j] = c;
}

// minivit.attention.softmax over the last axis: exp(x - max) / sum(exp(x - max)); y may be x.
// Rows hold n entries, ld apart in memory (ld >= n: rows may be padded, see attention_forward below).
template <typename T>
__global__ void softmax_rows(const T* x, T* y, long long rows, int n, int ld) {
    ROW_AND_LANE
    const T* xr = x + row * ld;
    T* yr = y + row * ld;
    T m = xr[0];
    for (int j = lane; j < n; j += WARP) m = fmax(m, xr[j]);
    m = warp_max(m);
    T s = 0;
    for (int j = lane; j < n; j += WARP) { T e = exp(xr[j] - m); yr[j] = e; s += e; }
    s = warp_sum(s);
    for (int j = lane; j < n; j += WARP) yr[j] /= s;
}

// minivit.attention.softmax_backward: ds = p (dp - sum(dp p)), times `scale`; ds may be dp.
template <typename T>
__global__ void softmax_backward_rows(const T* dp, const T* p, T* ds, long long rows, int n, int ld, T scale) {
    ROW_AND_LANE
    const T* dr = dp + row * ld;
    const T* pr = p + row * ld;
    T s = 0;
    for (int j = lane; j < n; j += WARP) s += dr[j] * pr[j];
    s = warp_sum(s);
    for (int j = lane; j < n; j += WARP) ds[row * ld + j] = scale * pr[j] * (dr[j] - s);
}

// minivit.activations._gelu_exact: y = x Phi(x), dydx = Phi(x) + x exp(-x^2/2) / sqrt(2 pi)
template <typename T>
__global__ void gelu_exact(const T* x, T* y, T* dydx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        T v = x[i];
        T phi = T(0.5) * (T(1) + erf(v * T(0.70710678118654752440)));
        y[i] = v * phi;
        dydx[i] = phi + v * exp(T(-0.5) * v * v) * T(0.39894228040143267794);
    }
}

// minivit.activations._gelu_tanh: y = x/2 (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3)
template <typename T>
__global__ void gelu_tanh(const T* x, T* y, T* dydx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        T v = x[i];
        T t = tanh(T(0.79788456080286535588) * (v + T(0.044715) * v * v * v));
        y[i] = T(0.5) * v * (T(1) + t);
        T du = T(0.79788456080286535588) * (T(1) + T(3 * 0.044715) * v * v);
        dydx[i] = T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du;
    }
}

// minivit.loss.cross_entropy, one row per warp: loss_row = lse - (eps/K) sum(z) - (1 - eps) z_label
// (the smoothed target q sums to 1), dz = (softmax(z) - q) / B. A label outside [0, K) gives NaN.
template <typename T, typename L>
__global__ void cross_entropy_rows(const T* z, const L* labels, T* loss, T* dz, long long rows, int K,
                                   T eps, T inv_b) {
    ROW_AND_LANE
    const T* zr = z + row * K;
    T m = zr[0];
    for (int j = lane; j < K; j += WARP) m = fmax(m, zr[j]);
    m = warp_max(m);
    T s = 0, sz = 0;
    for (int j = lane; j < K; j += WARP) { s += exp(zr[j] - m); sz += zr[j]; }
    T lse = m + log(warp_sum(s));
    sz = warp_sum(sz);
    long long y = (long long)labels[row];
    bool ok = y >= 0 && y < K;
    for (int j = lane; j < K; j += WARP) {
        T q = eps / K + (j == y ? T(1) - eps : T(0));
        dz[row * K + j] = (exp(zr[j] - lse) - q) * inv_b;
    }
    if (lane == 0) loss[row] = ok ? lse - eps / K * sz - (T(1) - eps) * zr[y] : quiet_nan<T>();
}

// minivit.data.augment then minivit.data.normalize, for a uint8 batch (B, C, H, W) already on the GPU:
// image b is cropped at (oy, ox) from its copy zero-padded by `pad`, mirrored when flip, then scaled
// (x / 255 - mean[c]) / std[c]. offsets holds (oy, ox, flip) per image; no augmentation is (pad, pad, 0).
template <typename T>
__global__ void crop_flip_normalize(const unsigned char* images, const long long* offsets, const T* mean,
                                    const T* std, T* out, long long n, int C, int H, int W, int pad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int j = i % W, r = (i / W) % H, c = (i / ((long long)W * H)) % C;
        long long b = i / ((long long)W * H * C);
        const long long* o = offsets + 3 * b;
        int y = (int)o[0] + r - pad;                            // row in the unpadded image
        int x = (int)o[1] + (o[2] ? W - 1 - j : j) - pad;       // column, mirrored when flipped
        T v = (y >= 0 && y < H && x >= 0 && x < W) ? T(images[((b * C + c) * H + y) * W + x]) : T(0);
        out[i] = (v / T(255) - mean[c]) / std[c];
    }
}

// ---- multi-tensor kernels: n tensors seen as one flat range of `total` elements ----
// ptrs[0..n) are the tensors' addresses, starts[0..n] their offsets in the flat range. A thread's
// grid-stride loop visits increasing flat indices, so the tensor it is in (t) only moves forward.
// minivit.optim.global_norm (squared): sum of g^2 over every tensor, in float64, one partial per block.
template <typename T>
__global__ void sumsq_multi(const long long* ptrs, const long long* starts, int n, long long total, double* partial) {
    double acc = 0;
    int t = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        while (i >= starts[t + 1]) ++t;
        long long k = i - starts[t];                   // index inside tensor t
        double g = ((const T*)ptrs[t])[k];
        acc += g * g;
    }
    __shared__ double warps[32];
    acc = warp_sum(acc);
    if (threadIdx.x % WARP == 0) warps[threadIdx.x / WARP] = acc;
    __syncthreads();
    if (threadIdx.x < WARP) {
        acc = threadIdx.x < blockDim.x / WARP ? warps[threadIdx.x] : 0.0;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) partial[blockIdx.x] = acc;
    }
}

// minivit.optim.clip_grad_norm's rescaling: g *= s for every tensor.
template <typename T>
__global__ void scale_multi(const long long* ptrs, const long long* starts, int n, long long total, T s) {
    int t = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        while (i >= starts[t + 1]) ++t;
        long long k = i - starts[t];                   // index inside tensor t
        ((T*)ptrs[t])[k] *= s;
    }
}

// minivit.optim.AdamW.step for every tensor at once. table: params[n], grads[n], starts[n+1], decays[n];
// m and v are the optimiser's flat state (one element per flat index).
template <typename T>
__global__ void adamw_multi(const long long* table, int n, long long total, T* m, T* v,
                            T decay_factor, T b1, T c1, T b2, T c2, T step, T bc2, T eps) {
    const long long* params = table;
    const long long* grads = table + n;
    const long long* starts = table + 2 * n;
    const long long* decays = table + 3 * n + 1;
    int t = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        while (i >= starts[t + 1]) ++t;
        long long k = i - starts[t];                   // index inside tensor t
        T* p = (T*)params[t];
        T g = ((const T*)grads[t])[k];
        T pk = p[k];
        if (decays[t]) pk *= decay_factor;             // decoupled weight decay: p <- p (1 - lr wd)
        T mi = b1 * m[i] + c1 * g;                      // c1 = 1 - b1
        T vi = b2 * v[i] + c2 * (g * g);                // c2 = 1 - b2
        m[i] = mi;
        v[i] = vi;
        p[k] = pk - step * mi / (sqrt(vi / bc2) + eps); // step = lr / (1 - b1^t), bc2 = 1 - b2^t
    }
}
"""

_TEMPLATES = ["crop_flip_normalize", "layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb", "softmax_rows",
              "softmax_backward_rows", "gelu_exact", "gelu_tanh", "sumsq_multi", "scale_multi", "adamw_multi"]
_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_LABELS = {np.dtype(np.int64): "long long", np.dtype(np.int32): "int"}


def name_expressions():
    """Every kernel instance the module needs compiled: each template for float and double."""
    names = [f"{k}<{t}>" for k in _TEMPLATES for t in _TYPES.values()]
    names += [f"cross_entropy_rows<{t}, {l}>" for t in _TYPES.values() for l in _LABELS.values()]
    return names


_module = None
_functions = {}
ROWS_PER_BLOCK = 8          # warps (rows) per 256-thread block in the row kernels
THREADS = 256


def _kernel(name, dtype, labels=None):
    """The compiled kernel `name` for this dtype (compiled once, at the first call of any kernel)."""
    key = (name, dtype, labels)
    if key not in _functions:
        global _module
        import cupy
        if _module is None:
            _module = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=name_expressions())
        if dtype not in _TYPES:
            raise TypeError(f"minivit's CUDA kernels take float32 or float64 arrays, got {dtype}")
        args = _TYPES[dtype] + (f", {_LABELS[labels]}" if labels is not None else "")
        _functions[key] = _module.get_function(f"{name}<{args}>")
    return _functions[key]


def _rows_launch(kernel, rows, *args):
    """Launch a one-warp-per-row kernel over `rows` rows."""
    if rows:
        blocks = -(-rows // ROWS_PER_BLOCK)
        kernel((blocks,), (ROWS_PER_BLOCK * 32,), args)


def _flat_blocks(n):
    """Blocks for a grid-stride kernel over n elements: enough to fill the GPU, at most one per THREADS elements."""
    return max(1, min(-(-n // THREADS), 132 * 8))


def _contiguous(*arrays):
    import cupy
    return [cupy.ascontiguousarray(a) for a in arrays]


def layernorm_forward(x, w, b, eps):
    """As minivit.layers.norm.layernorm_forward: -> y, (xhat, rstd, w)."""
    import cupy
    x, w, b = _contiguous(x, w.astype(x.dtype, copy=False), b.astype(x.dtype, copy=False))
    D = x.shape[-1]
    rows = x.size // D if D else 0
    y, xhat = cupy.empty(x.shape, x.dtype), cupy.empty(x.shape, x.dtype)
    rstd = cupy.empty(x.shape[:-1] + (1,), dtype=x.dtype)
    t = x.dtype.type
    _rows_launch(_kernel("layernorm_forward", x.dtype), rows, x, w, b, y, xhat, rstd,
                 np.int64(rows), np.int32(D), t(eps))
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    """As minivit.layers.norm.layernorm_backward: -> dx, dw, db."""
    import cupy
    xhat, rstd, w = cache
    dy, = _contiguous(dy)
    D = xhat.shape[-1]
    rows = xhat.size // D
    dx = cupy.empty(dy.shape, dy.dtype)
    _rows_launch(_kernel("layernorm_backward_dx", dy.dtype), rows, dy, xhat, rstd, w, dx, np.int64(rows), np.int32(D))
    per_chunk = max(64, -(-rows // 65535))           # rows summed by one thread (grid.y is at most 65535)
    chunks = max(1, -(-rows // per_chunk))
    partial = cupy.empty((chunks, 2, D), dtype=dy.dtype)
    _kernel("layernorm_backward_dwdb", dy.dtype)((-(-D // 128), chunks), (128,),
                                                 (dy, xhat, partial, np.int64(rows), np.int32(D), np.int64(per_chunk)))
    sums = column_sums(partial.reshape(chunks, 2 * D))  # (2D,): dw, then db
    return dx, sums[:D], sums[D:]


def softmax(x, out=None):
    """As minivit.layers.attention.softmax over the last axis; out may be x."""
    import cupy
    x, = _contiguous(x)
    if out is None or not out.flags.c_contiguous:
        out = cupy.empty(x.shape, x.dtype)
    n = x.shape[-1]
    rows = x.size // n if n else 0
    _rows_launch(_kernel("softmax_rows", x.dtype), rows, x, out, np.int64(rows), np.int32(n), np.int32(n))
    return out


def softmax_backward(dp, p, out=None, scale=1.0):
    """scale * minivit.layers.attention.softmax_backward(dp, p) over the last axis; out may be dp."""
    import cupy
    dp, p = _contiguous(dp, p)
    if out is None or not out.flags.c_contiguous:
        out = cupy.empty(dp.shape, dp.dtype)
    n = p.shape[-1]
    rows = p.size // n if n else 0
    _rows_launch(_kernel("softmax_backward_rows", p.dtype), rows, dp, p, out, np.int64(rows), np.int32(n),
                 np.int32(n), p.dtype.type(scale))
    return out


def gelu_forward(x, approximate, keep_cache=True, out=None, bias=None):
    """As minivit.layers.activations.gelu_forward: GELU(x + bias) -> y, GELU'(x + bias) (or None without
    keep_cache). `out` is not used: the kernel writes a new array."""
    import cupy
    if bias is not None:
        x = x + bias
    x, = _contiguous(x)
    y, dydx = cupy.empty(x.shape, x.dtype), cupy.empty(x.shape, x.dtype)
    name = {"exact": "gelu_exact", "tanh": "gelu_tanh"}[approximate]
    if x.size:
        _kernel(name, x.dtype)((_flat_blocks(x.size),), (THREADS,), (x, y, dydx, np.int64(x.size)))
    return y, (dydx if keep_cache else None)


def augment_normalize(images, mean, std, dtype, rng=None, pad=4, flip=True):
    """As minivit.data.normalize(minivit.data.augment(images, rng, pad, flip), mean, std), in one kernel.

    images: uint8 (B, C, H, W) on the GPU. The offsets are drawn from `rng` on the host in the
    order minivit.data.augment draws them, so both give the same batch; rng None: no augmentation.
    """
    import cupy
    B, C, H, W = images.shape
    offsets = np.zeros((B, 3), dtype=np.int64)
    if rng is None:
        offsets[:, :2] = pad
    else:
        offsets[:, 0] = rng.integers(0, 2 * pad + 1, B)
        offsets[:, 1] = rng.integers(0, 2 * pad + 1, B)
        if flip:
            offsets[:, 2] = rng.random(B) < 0.5
    dtype = np.dtype(dtype)
    images, = _contiguous(images)
    stats = cupy.asarray(np.concatenate([np.asarray(mean, dtype), np.asarray(std, dtype)]))
    out = cupy.empty(images.shape, dtype)
    if out.size:
        _kernel("crop_flip_normalize", dtype)((_flat_blocks(out.size),), (THREADS,),
                                              (images, cupy.asarray(offsets), stats[:C], stats[C:], out,
                                               np.int64(out.size), np.int32(C), np.int32(H), np.int32(W), np.int32(pad)))
    return out


def _cublas_gemm_batched(a, b, c, trans_a=False, trans_b=False, alpha=1.0):
    """c[i] = alpha op(a[i]) op(b[i]) for each i, by one cuBLAS strided-batched call.

    a, b, c: 3-D (batch, rows, cols) row-major arrays whose last axis has unit stride; the row
    stride (cuBLAS's "leading dimension") may exceed the row length, so c can be a view into
    a padded buffer. cuBLAS is column-major, where a row-major matrix reads as its transpose:
    c = op(a) op(b) is therefore asked for as c^T = op(b)^T op(a)^T, that is b before a.
    """
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas
    size = a.itemsize
    lda, ldb, ldc = a.strides[1] // size, b.strides[1] // size, c.strides[1] // size
    m, k = (a.shape[2], a.shape[1]) if trans_a else (a.shape[1], a.shape[2])
    n = b.shape[1] if trans_b else b.shape[2]
    gemm = cublas.sgemmStridedBatched if a.dtype == np.float32 else cublas.dgemmStridedBatched
    scalars = np.array([alpha, 0.0], dtype=a.dtype)       # alpha, beta: read from the host
    handle = device.get_cublas_handle()
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    gemm(handle, cublas.CUBLAS_OP_T if trans_b else cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T if trans_a else cublas.CUBLAS_OP_N,
         n, m, k, scalars.ctypes.data, b.data.ptr, ldb, b.strides[0] // size, a.data.ptr, lda, a.strides[0] // size,
         scalars.ctypes.data + size, c.data.ptr, ldc, c.strides[0] // size, c.shape[0])


_ones = {}


def column_sums(a):
    """a (M, n) C-contiguous -> (n,): a.sum(axis=0), as the product ones(M) @ a on cuBLAS.

    CuPy's own sum over the first axis of a tall matrix was the largest item of a small ViT's
    GPU profile (docs/results.md); as a matrix-vector product it is a single fast pass."""
    import cupy
    a, = _contiguous(a)
    M, n = a.shape
    key = (M, a.dtype, cupy.cuda.Device().id)
    if key not in _ones:
        _ones[key] = cupy.ones((1, 1, M), dtype=a.dtype)
    out = cupy.empty((1, 1, n), dtype=a.dtype)
    if M == 0:
        out[...] = 0
    elif n:
        _cublas_gemm_batched(_ones[key], a.reshape(1, M, n), out)
    return out.reshape(n)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D arrays, by cuBLAS directly (CuPy's matmul spends more host time per call)."""
    import cupy
    a, b = _contiguous(a, b)
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = cupy.empty((1, m, n), dtype=a.dtype)
    if c.size:
        _cublas_gemm_batched(a[None], b[None], c, trans_a, trans_b)
    return c[0]


def linear_forward(x, w, b):
    """As minivit.layers.linear.linear_forward."""
    x2 = x.reshape(-1, x.shape[-1])
    y = matmul(x2, w)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[1]), (x, w)


def linear_backward(dy, cache):
    """As minivit.layers.linear.linear_backward."""
    x, w = cache
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return matmul(dy2, w, trans_b=True).reshape(x.shape), matmul(x2, dy2, trans_a=True), column_sums(dy2)


class AttentionCache:
    """What attention_backward below needs: q, k, v as (batch, N, d), the probabilities, the scale."""
    mask = None     # no dropout on this path: the layer's attention_backward then hands the cache back here

    def __init__(self, q, k, v, p, scale, shape):
        self.q, self.k, self.v, self.p, self.scale, self.shape = q, k, v, p, scale, shape


def attention_forward(q, k, v, scale):
    """As minivit.layers.attention.attention_forward without dropout or bias: q, k, v (..., N, d) -> out, cache.

    The N x N logits are stored with each row padded to a multiple of 4 entries (16 bytes).
    With N = 65 or 197, unpadded rows leave cuBLAS only its unaligned kernels, several times
    slower; padded, the same products run on the aligned ones. The scale enters the first
    product as cuBLAS's alpha, and the softmax kernel reads only the N real entries of a row.
    """
    import cupy
    N, d = q.shape[-2:]
    q3, k3, v3 = (cupy.ascontiguousarray(a).reshape(-1, N, d) for a in (q, k, v))
    L = -(-N // 4) * 4
    p = cupy.empty((q3.shape[0], N, L), dtype=q.dtype)[:, :, :N]   # (batch, N, N) in padded rows
    _cublas_gemm_batched(q3, k3, p, trans_b=True, alpha=scale)      # logits q k^T * scale
    _rows_launch(_kernel("softmax_rows", q.dtype), p.shape[0] * N, p, p, np.int64(p.shape[0] * N), np.int32(N),
                 np.int32(L))                                        # probabilities, in place
    out = cupy.empty(q3.shape, q3.dtype)
    _cublas_gemm_batched(p, v3, out)                                 # p v
    return out.reshape(q.shape), AttentionCache(q3, k3, v3, p, scale, q.shape)


def attention_backward(dout, cache):
    """-> dq, dk, dv (..., N, d), as views of one (3, ..., N, d) array (its [0], [1], [2])."""
    import cupy
    q, k, v, p, scale = cache.q, cache.k, cache.v, cache.p, cache.scale
    batch, N, d = q.shape
    L = p.strides[1] // p.itemsize
    dout = cupy.ascontiguousarray(dout).reshape(batch, N, d)
    grads = cupy.empty((3, batch, N, d), dtype=q.dtype)
    _cublas_gemm_batched(p, dout, grads[2], trans_a=True)           # dv = p^T dout
    ds = cupy.empty((batch, N, L), dtype=q.dtype)[:, :, :N]
    _cublas_gemm_batched(dout, v, ds, trans_b=True)                  # dp = dout v^T
    _rows_launch(_kernel("softmax_backward_rows", q.dtype), batch * N, ds, p, ds, np.int64(batch * N), np.int32(N),
                 np.int32(L), q.dtype.type(scale))                   # ds = scale p (dp - rowsum(dp p)), in place
    _cublas_gemm_batched(ds, k, grads[0])                            # dq = ds k   (the scale is in ds)
    _cublas_gemm_batched(ds, q, grads[1], trans_a=True)              # dk = ds^T q
    grads = grads.reshape((3,) + tuple(cache.shape))
    return grads[0], grads[1], grads[2]


def cross_entropy(logits, labels, label_smoothing):
    """As minivit.layers.loss.cross_entropy, without a host sync: a label outside [0, K) makes the loss NaN."""
    import cupy
    logits, = _contiguous(logits)
    B, K = logits.shape
    labels = cupy.asarray(labels)
    if labels.dtype not in _LABELS:
        labels = labels.astype(np.int64)
    labels, = _contiguous(labels)
    rowloss = cupy.empty(B, dtype=logits.dtype)
    dlogits = cupy.empty(logits.shape, logits.dtype)
    t = logits.dtype.type
    _rows_launch(_kernel("cross_entropy_rows", logits.dtype, labels.dtype), B, logits, labels, rowloss, dlogits,
                 np.int64(B), np.int32(K), t(label_smoothing), t(1.0 / B) if B else t(0))
    return rowloss.sum() / B, dlogits


class TensorTable:
    """A device table of the addresses of a list of same-dtype arrays and their flat offsets."""

    def __init__(self, arrays):
        import cupy
        self.arrays = [a if a.flags.c_contiguous else cupy.ascontiguousarray(a) for a in arrays]
        self.dtype = self.arrays[0].dtype
        if any(a.dtype != self.dtype for a in self.arrays):
            raise TypeError("minivit's multi-tensor kernels need every tensor in one dtype")
        sizes = np.array([a.size for a in self.arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self.ptrs = np.array([a.data.ptr for a in self.arrays], dtype=np.int64)


def _upload(*columns):
    """One host-to-device copy of int64 columns laid end to end."""
    import cupy
    return cupy.asarray(np.concatenate([np.asarray(c, dtype=np.int64) for c in columns]))


def sum_of_squares(arrays):
    """sum over every array of sum(a^2), in float64, as a 0-d device array (minivit.train.optim.global_norm)."""
    import cupy
    tab = TensorTable(list(arrays))
    blocks = _flat_blocks(tab.total)
    partial = cupy.zeros(blocks, dtype=np.float64)
    n = len(tab.arrays)
    if tab.total:
        dev = _upload(tab.ptrs, tab.starts)
        _kernel("sumsq_multi", tab.dtype)((blocks,), (THREADS,), (dev[:n], dev[n:], np.int32(n), np.int64(tab.total), partial))
    return partial.sum()


def scale_all(arrays, s):
    """a *= s for every array, in one launch (the arrays must be C-contiguous: they are updated in place)."""
    arrays = list(arrays)
    if not all(a.flags.c_contiguous for a in arrays):
        raise ValueError("scale_all updates in place and needs C-contiguous arrays")
    tab = TensorTable(arrays)
    n = len(arrays)
    if tab.total:
        dev = _upload(tab.ptrs, tab.starts)
        _kernel("scale_multi", tab.dtype)((_flat_blocks(tab.total),), (THREADS,),
                                          (dev[:n], dev[n:], np.int32(n), np.int64(tab.total), tab.dtype.type(s)))


def adamw_step(params, grads, decays, m, v, lr, b1, b2, bc1, bc2, eps, weight_decay):
    """As minivit.train.optim.AdamW.step over every tensor in one launch.

    params, grads: lists of arrays in the same order; decays: booleans; m, v: the flat state
    (the concatenation of every tensor's moments, in that order), updated in place.
    """
    for p in params:
        if not p.flags.c_contiguous:
            raise ValueError("the fused AdamW updates parameters in place and needs them C-contiguous")
    ptab, gtab = TensorTable(params), TensorTable(grads)
    if ptab.dtype != gtab.dtype or list(ptab.starts) != list(gtab.starts):
        raise ValueError("AdamW: gradients must match the parameters in shape and dtype")
    n = len(params)
    if not ptab.total:
        return
    table = _upload(ptab.ptrs, gtab.ptrs, ptab.starts, np.asarray(decays, dtype=np.int64))
    t = ptab.dtype.type
    _kernel("adamw_multi", ptab.dtype)(
        (_flat_blocks(ptab.total),), (THREADS,),
        (table, np.int32(n), np.int64(ptab.total), m, v, t(1.0 - lr * weight_decay), t(b1), t(1.0 - b1),
         t(b2), t(1.0 - b2), t(lr / bc1), t(bc2), t(eps)))
