"""Tools around a model: the layer profiler, few-shot probes, attention maps, gradient checks, exercises."""
