"""The layers: each a pair of pure functions, forward(x, params...) -> (out, cache) and
backward(dout, cache) -> (dx, dparams...), on NumPy or CuPy arrays. The math a student reads first."""
from . import activations, attention, conv, linear, loss, norm, posembed, resample, stem  # noqa: F401,E402
