"""The CPU's fast paths for the NumPy backend, both optional: fused kernels compiled by numba
(minivit/cpu/kernels.py) and the larger matrix products by Intel's MKL (minivit/cpu/blas.py). Without
numba, or with MINIVIT_FUSED=0, the layers run their NumPy lines. Imports nothing of minivit outside cpu/."""
