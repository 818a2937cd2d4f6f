"""Fused CPU kernels for the NumPy backend, compiled by numba (minivit/cpu/kernels.py). Optional: without
numba, or with MINIVIT_FUSED=0, the layers run their NumPy lines. Imports nothing of minivit."""
