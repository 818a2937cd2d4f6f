"""Keep freed memory in the process, so the next training step does not fault it in again.

A training step makes and drops hundreds of temporary arrays of a few MB each (the
(B, H, N, N) attention scores, the (B, N, M) MLP activations). glibc's malloc serves
every block above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a
fresh mmap, and gives it back with munmap when freed; it also trims the top of its heap
whenever more than 128 KiB is free there. The next step then touches brand-new pages,
and the kernel zero-fills each 4 KiB page on its first write: a page fault (what that
cost a training step is measured in docs/results.md, "What made the difference").

`keep_freed_memory()` asks glibc, through its documented `mallopt` call (man 3 mallopt),
to serve blocks up to 32 MiB from its heap and never trim it. Freed arrays then stay
mapped and are reused by the next step, which is what PyTorch's caching CPU allocator
achieves too. The process's peak memory does not grow: only memory it already held is
kept. On systems without glibc (macOS, Windows, musl) it does nothing.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems

_done = None


def keep_freed_memory():
    """Tune glibc's malloc once per process; returns True if it was (or had been) tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),  # blocks up to 32 MiB come from the heap, not mmap
        (M_TRIM_THRESHOLD, 2 ** 31 - 1),          # never hand the heap's free top back to the kernel
        (M_TOP_PAD, 64 * 1024 * 1024),            # grow the heap in 64 MiB steps, not page by page
    ))
    return _done
