"""Test tools: the package's own gradient checker (minivit.gradcheck)."""
from minivit.gradcheck import check_grads, numerical_grad, rel_error  # noqa: F401
