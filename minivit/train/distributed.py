"""Data-parallel training over MPI processes: `mpiexec -n 4 minivit train ...` (docs/distributed.md).

Every rank holds the whole model and builds the same global batch of B images; rank r of N computes
the rows [B r // N, B (r + 1) // N), its shards' gradients already scaled by their share of B
(engine.Engine.loss_and_grads). One Allreduce (a sum) of a flat buffer then gives every rank

    sum over ranks r of  sum over images i in r's rows of  (1 / B) d loss_i / d theta
        = (1 / B) sum over all B images of d loss_i / d theta,

the large batch's mean gradient, the one a single process computes for the same batch. So the
optimiser steps identically everywhere, and what is computed from the gradients after the sum is
the same on every rank too: the NaN guard, the clip norm (the norm of the summed gradient), AdamW's
moments, the EMA of the weights. Nothing else needs to be kept in step: the ViT has no BatchNorm,
whose batch statistics would be per rank unless synchronised; LayerNorm normalises each token by
itself. There is no loss scale on the CPU. The clock of a --time-budget run and a Ctrl-C are
agreed through the same buffer, so every rank takes the same number of steps.

Summation order: a rank adds its own shards first, then MPI adds the ranks' sums, so the gradient
equals the single process's to float32 rounding, not bit for bit (tests/test_distributed.py).

Without mpi4py, or with one process, none of this runs: World() is a world of one that does nothing.
"""
import os
import sys
import time
import traceback

import numpy as np

from ..backend import backend_name, to_numpy, xp as backend_xp

# World.abort's pause between flushing a rank's last lines and MPI_Abort, for mpiexec to forward them.
ABORT_GRACE_S = 0.2
# What launchers set in each process: MPICH's and Intel MPI's Hydra (and Slurm's srun with PMI-2), Open MPI, MVAPICH.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(RuntimeError):
    """An MPI launch that cannot work: mpi4py missing, or an mpiexec of another MPI library."""


def launched_size(environ=os.environ):
    """How many processes the launcher says it started (1 outside mpiexec)."""
    for name in SIZE_VARIABLES:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 1


class World:
    """The processes of one run: `rank` of `size`. World() is a world of one (no MPI)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._buffer = None
        self._guarded = False   # guard_exceptions installed

    @classmethod
    def launched(cls):
        """The world mpiexec started: a world of one when not under mpiexec (mpi4py is not even
        imported); a clear DistributedError when it cannot be joined."""
        n = launched_size()
        if n <= 1:
            return cls()
        try:
            from mpi4py import MPI
        except ImportError:
            raise DistributedError(f"mpiexec started {n} processes, but mpi4py is not installed: "
                                   "pip install mpi4py mpich (docs/distributed.md)") from None
        comm = MPI.COMM_WORLD
        if comm.Get_size() != n:
            raise DistributedError(f"mpiexec started {n} processes but each sees an MPI world of {comm.Get_size()}: "
                                   f"this mpiexec ({_which('mpiexec')}) belongs to another MPI library than mpi4py's "
                                   f"({MPI.Get_library_version().splitlines()[0].strip()}); use that library's mpiexec")
        if backend_name() != "numpy":
            raise DistributedError("MPI ranks run on the NumPy backend; CuPy ranks (one GPU each) are not built yet: "
                                   "drop --backend cupy, or train on one GPU without mpiexec")
        return cls(comm)

    @property
    def is_root(self):
        return self.rank == 0

    def rows(self, n):
        """This rank's rows of a global batch of n: [n r // N, n (r + 1) // N)."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    # ------------------------------------------------------------ one step's sum
    def sum_step(self, grads, loss, correct, extras=()):
        """Sum over the ranks, in one Allreduce of one flat buffer: the gradients (name by name, in
        sorted order), the loss, the number correct and `extras` (numbers to agree on).
        -> (grads, loss, correct, extras) summed; the gradients are views into the buffer, valid
        until the next call. A world of one returns its arguments."""
        if self.size == 1:
            return grads, loss, correct, list(extras)
        from mpi4py import MPI
        names = sorted(grads)
        sizes = [grads[k].size for k in names]
        total = sum(sizes) + 2 + len(extras)
        dtype = grads[names[0]].dtype
        if self._buffer is None or self._buffer.size != total or self._buffer.dtype != dtype:
            self._buffer = np.empty(total, dtype)
        buf, at = self._buffer, 0
        for k, n in zip(names, sizes):
            buf[at:at + n] = to_numpy(grads[k]).ravel()
            at += n
        buf[at:] = [float(loss), float(correct), *extras]
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        out, at = {}, 0
        for k, n in zip(names, sizes):
            out[k] = buf[at:at + n].reshape(grads[k].shape)
            at += n
        return out, buf[at], buf[at + 1], [float(v) for v in buf[at + 2:]]

    def sum_numbers(self, values):
        """A list of floats summed over the ranks (float64)."""
        if self.size == 1:
            return list(values)
        from mpi4py import MPI
        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf.tolist()

    def gather(self, obj):
        """A small picklable object from every rank -> the list on rank 0, None elsewhere."""
        return [obj] if self.size == 1 else self.comm.gather(obj, root=0)

    def bcast(self, obj):
        """A small picklable object from rank 0 to every rank."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def bcast_arrays(self, arrays):
        """A dict of arrays from rank 0 (pass None elsewhere) to every rank, array by array (no pickle
        of the data, so a model of any size goes through); each rank gets them on its backend."""
        if self.size == 1:
            return arrays
        spec = self.bcast([(k, v.shape, str(v.dtype)) for k, v in arrays.items()] if self.is_root else None)
        xp, out = backend_xp(), {}
        for name, shape, dtype in spec:
            a = np.ascontiguousarray(to_numpy(arrays[name])) if self.is_root else np.empty(shape, dtype)
            self.comm.Bcast(a, root=0)
            out[name] = a if xp is np else xp.asarray(a)
        return out

    def describe(self):
        """'rank r: pid P on host' for every rank (on rank 0; collective), so that a launcher's message
        about a process by its PID (MPICH's, when a rank is killed) can be read as a rank."""
        import socket
        mine = (self.rank, os.getpid(), socket.gethostname())
        return [f"rank {r}: pid {p} on {h}" for r, p, h in (self.gather(mine) or [])]

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job now (mpiexec returns `code`). The lines just written reach mpiexec through
        a pipe that its proxy reads in its own time; an abort at once could tear the job down before the proxy
        forwarded them, leaving the user an exit status and no message. So: flush, and give it ABORT_GRACE_S."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def guard_exceptions(self):
        """An exception no one catches, on any rank, ends the whole job with one line naming the rank,
        instead of leaving the other ranks waiting in their next Allreduce forever. Installed once per world."""
        if self.size == 1 or self._guarded:
            return
        self._guarded = True
        previous = sys.excepthook

        def hook(kind, value, tb):
            traceback.print_exception(kind, value, tb)
            print(f"minivit: rank {self.rank} of {self.size} failed ({kind.__name__}); ending the job", file=sys.stderr)
            self.abort(1)
            previous(kind, value, tb)
        sys.excepthook = hook


def _which(program):
    import shutil
    return shutil.which(program) or program


_WORLD = None


def joined_world():
    """The world this process joined, or None before current_world() was first asked."""
    return _WORLD


def current_world():
    """The world this process was launched into (World.launched), found once."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World.launched()
    return _WORLD
