"""Optimisers (AdamW, SGD with momentum), clipping by global norm, the learning-rate schedules.

Optimiser state lives in flat dicts keyed like the parameters, so a step is a
loop over names and a checkpoint stores the state next to the parameters.
"""
import math

from ..backend import fused, get_array_module


def decays(name, value):
    """timm's rule: weight-decay tensors with 2+ dimensions, never biases, LayerNorm
    gains, the class token or position embeddings (pos_embed, pos_embed_row/col, and the
    per-block blocks.i.pos_embed); nor pre-training's [mask] token, a token like the class token."""
    leaf = name.rsplit(".", 1)[-1]
    return value.ndim >= 2 and leaf not in ("cls_token", "mask_token") and not leaf.startswith("pos_embed")


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.

    p <- p - lr * wd * p                       (decoupled decay, for names where decays() holds)
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    Adam is AdamW with weight_decay = 0. Assign `opt.lr` to follow a schedule.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t = 0          # steps taken; bias corrections use it, so it must advance every step
        self.m, self.v = {}, {}
        self._flat = None   # the fused step's state layout (see _flat_state)

    def step(self, params, grads):
        """Update every array in `params` in place from the same-named `grads`."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        kernel = fused(next(iter(params.values()), None), "adamw_step")
        if kernel and _one_contiguous_dtype(params.values()):
            # The loop below as one kernel over every tensor: CUDA on a GPU (minivit/gpu/kernels.py),
            # numba on a CPU (minivit/cpu/kernels.py)
            names, m, v, decay = self._flat_state(params)
            kernel([params[n] for n in names], [grads[n] for n in names], decay, m, v,
                   self.lr, b1, b2, bc1, bc2, self.eps, self.weight_decay)
            return
        for name, p in params.items():
            g = grads[name]
            xp = get_array_module(p)
            if name not in self.m:
                self.m[name], self.v[name] = xp.zeros_like(p), xp.zeros_like(p)
            m, v = self.m[name], self.v[name]
            if self.weight_decay and decays(name, p):
                p *= 1.0 - self.lr * self.weight_decay
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= (self.lr / bc1) * m / (xp.sqrt(v / bc2) + self.eps)

    def _flat_state(self, params):
        """m and v as one flat array each, with self.m[name] and self.v[name] views into them.

        Built at the first fused step (zeros, or the moments already held, e.g. after
        load_state_dict) and kept while the parameters' names and the views stay the same.
        """
        names = list(params)
        f = self._flat
        if (f is None or f["names"] != names or any(self.m.get(n) is not a for n, a in zip(names, f["m_views"]))
                or any(self.v.get(n) is not a for n, a in zip(names, f["v_views"]))):
            xp = get_array_module(params[names[0]])
            f = {"names": names, "decay": [decays(n, params[n]) for n in names]}
            for key, state in (("m", self.m), ("v", self.v)):
                parts = [xp.asarray(state[n], dtype=params[n].dtype).ravel() if n in state else
                         xp.zeros(params[n].size, dtype=params[n].dtype) for n in names]
                flat = xp.concatenate(parts) if parts else xp.zeros(0, dtype=params[names[0]].dtype)
                views, start = [], 0
                for n in names:
                    views.append(flat[start:start + params[n].size].reshape(params[n].shape))
                    state[n] = views[-1]
                    start += params[n].size
                f[key], f[key + "_views"] = flat, views
            self._flat = f
        return names, f["m"], f["v"], f["decay"]

    def state_dict(self):
        """Flat dict of arrays: 'm.<name>', 'v.<name>' and the step count 't'."""
        state = {"t": self.t}
        state.update({"m." + k: v for k, v in self.m.items()})
        state.update({"v." + k: v for k, v in self.v.items()})
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.m = {k[2:]: v for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: v for k, v in state.items() if k.startswith("v.")}


class SGD:
    """SGD with momentum, as torch.optim.SGD (dampening 0): the paper's fine-tuning optimiser.

    g <- g + wd * p (coupled L2 decay, for names where decays() holds);  u <- mu u + g;  p <- p - lr u
    """

    def __init__(self, lr=0.01, momentum=0.9, weight_decay=0.0):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(f"SGD: invalid lr={lr}, momentum={momentum} or weight_decay={weight_decay}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.t = 0
        self.u = {}

    def step(self, params, grads):
        self.t += 1
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and decays(name, p):
                g = g + self.weight_decay * p
            if self.momentum:
                if name not in self.u:
                    self.u[name] = g.copy()  # torch starts the buffer at the first gradient
                else:
                    self.u[name] *= self.momentum
                    self.u[name] += g
                g = self.u[name]
            p -= self.lr * g

    def state_dict(self):
        state = {"t": self.t}
        state.update({"u." + k: v for k, v in self.u.items()})
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.u = {k[2:]: v for k, v in state.items() if k.startswith("u.")}


class EMA:
    """An exponential moving average of the weights (Polyak averaging), kept beside training.

    After every optimiser step:  avg <- decay * avg + (1 - decay) * p,  starting from the
    initial weights. The average forgets with a time constant of 1 / (1 - decay) steps (1,000
    at 0.999), so it smooths the noise of the last steps' updates; evaluated alongside the raw
    weights, it is often the better model late in training. In place, on the arrays' backend.
    """

    def __init__(self, params, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {k: v.copy() for k, v in params.items()}

    def update(self, params):
        for k, p in params.items():
            avg = self.params[k]
            avg *= self.decay
            avg += (1.0 - self.decay) * p

    def state_dict(self):
        """'ema.<name>' arrays, stored with the optimiser's state in a checkpoint."""
        return {"ema." + k: v for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Take the 'ema.<name>' arrays of `state` (other keys are ignored); False if there are none."""
        found = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
        if found:
            self.params = {k: v.copy() for k, v in found.items()}
        return bool(found)


def _one_contiguous_dtype(arrays):
    """True if the arrays are all C-contiguous and of one dtype (what the multi-tensor kernels take)."""
    arrays = list(arrays)
    return bool(arrays) and all(a.flags.c_contiguous and a.dtype == arrays[0].dtype for a in arrays)


def global_norm(grads):
    """sqrt of the sum of squares of every gradient entry, as a Python float (one host sync)."""
    gs = list(grads.values())
    kernel = fused(gs[0], "sum_of_squares") if gs else None
    if kernel and _one_contiguous_dtype(gs):
        return math.sqrt(float(kernel(gs)))  # one kernel over every tensor, one sync
    return math.sqrt(sum(_sum_of_squares(g) for g in gs))


def _sum_of_squares(g):
    """The sum of g's squared entries, as a Python float.

    The dot product of g with itself: one BLAS call in g's own precision, as torch's
    clip_grad_norm_ sums in the gradients' dtype, instead of squaring a float64 copy (measured in
    docs/results.md, "The clipping norm in one dot product"). Entries above about 1.8e19 overflow float32 when
    squared; such an array is summed again in float64, so the norm stays finite and clipping
    still scales by the true norm."""
    xp = get_array_module(g)
    s = float(xp.vdot(g, g))
    return s if math.isfinite(s) else float((g.astype("float64") ** 2).sum())


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global norm is at most max_norm (as torch's
    clip_grad_norm_, which the paper uses at 1). Returns the norm before clipping."""
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        gs = list(grads.values())
        kernel = fused(gs[0], "scale_all")
        if kernel and _one_contiguous_dtype(gs):
            kernel(gs, scale)                      # one kernel over every tensor
            return norm
        for g in gs:
            g *= scale
    return norm


# The decay after warmup, from base_lr at q = 0 to min_lr at q = 1 (q: the share of the decay done).
# Linear is Li, Yumer & Ramanan's choice for a run on a budget (ICLR 2020, "Budgeted training").
DECAYS = {
    "cosine": lambda base_lr, min_lr, q: min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * q)),
    "linear": lambda base_lr, min_lr, q: min_lr + (base_lr - min_lr) * (1.0 - q),
}


def warmup_decay(step, total_steps, warmup_steps, base_lr, min_lr=0.0, shape="cosine"):
    """Learning rate at `step` (0-based): linear warmup to base_lr, then DECAYS[shape] to min_lr at the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return DECAYS[shape](base_lr, min_lr, min(progress, 1.0))


def budget_decay(now, warmup_end, budget, base_lr, min_lr=0.0, shape="cosine"):
    """Learning rate after warmup on a time budget: DECAYS[shape] at the share of the training time from
    warmup's end (`warmup_end` seconds) to the deadline (`budget`) spent at `now`."""
    q = (now - warmup_end) / max(budget - warmup_end, 1e-9)
    return DECAYS[shape](base_lr, min_lr, min(max(q, 0.0), 1.0))
