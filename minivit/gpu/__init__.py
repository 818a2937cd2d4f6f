"""The CUDA path: fused kernels, cuBLAS calls and multi-tensor tables for CuPy arrays.

Imports nothing of minivit; `minivit.backend.fused` hands these to the layers when their inputs
live on a GPU. A reader who never touches a GPU never has to read it."""
