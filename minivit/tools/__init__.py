"""Tools around a model: the layer profiler, few-shot probes, attention maps, gradient checks, exercises."""
from . import fewshot, gradcheck, profile, visualize  # noqa: F401,E402
