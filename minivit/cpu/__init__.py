"""The CPU's fast paths for the NumPy backend, both optional: fused kernels compiled by numba
(minivit/cpu/kernels.py) and the larger matrix products by Intel's MKL (minivit/cpu/blas.py). Without
numba, or with MINIVIT_FUSED=0, the layers run their own lines, the textbook form. Both implement the kernel
contract (minivit/contract.py) and import nothing else of minivit."""
