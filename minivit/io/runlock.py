"""One training run per output folder.

Two runs writing one folder would interleave metrics.jsonl and race on checkpoint.npz.tmp.
A run holds an exclusive lock on `<folder>/.lock` (fcntl.flock) for as long as it trains, and
writes its PID there so a second run can name the holder. The kernel releases the lock when
the holding process ends in any way, kill -9 included, so a lock left by a killed run is
stale by construction: the next run simply takes it. A run that ends normally deletes the
file while it still holds the lock, so a finished run folder holds no .lock; a run that
opened the file just before it was deleted finds, once it has the lock, that the path no
longer names its file, and tries again. On systems without fcntl (Windows) runs are not locked.
"""
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunFolderBusy(RuntimeError):
    """Another process is training into this folder."""


class RunLock:
    """with RunLock(folder): ... holds the folder's lock; raises RunFolderBusy if another process has it."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.fd = None

    def acquire(self):
        if fcntl is None or self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderBusy(f"{self.path.parent} is in use by another training run (PID {holder}); "
                                    "wait for it to finish or choose another --out") from None
            if self._names(fd):
                break
            os.close(fd)  # the holder deleted this file as we opened it: lock the path's new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _names(self, fd):
        """Whether the lock path still names the file `fd` holds open."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self):
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # deleted while still locked: no run can lock a stale file
            finally:
                os.close(self.fd)  # closing releases the flock
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
