"""A run folder's life: made (runs/<time>, or --out), checked, locked from the check to the command's end,
and removed again when the command fails before writing into it. One training run per folder.

Two runs writing one folder would interleave metrics.jsonl and race on checkpoint.npz.tmp.
A run holds an exclusive lock on `<folder>/.lock` (fcntl.flock) for as long as it trains, and
writes its PID there so a second run can name the holder. The kernel releases the lock when
the holding process ends in any way, kill -9 included, so a lock left by a killed run is
stale by construction: the next run simply takes it. A run that ends normally deletes the
file while it still holds the lock, so a finished run folder holds no .lock; a run that
opened the file just before it was deleted finds, once it has the lock, that the path no
longer names its file, and tries again. On systems without fcntl (Windows) runs are not locked.

The command takes the lock before any data loads and keeps it to its end (`run_folder`), so a second run
cannot slip in while the first decodes its data; the trainer takes the same lock again (a process may
hold a folder's lock more than once: RunLock counts).
"""
import contextlib
import os
import shutil
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunFolderBusy(RuntimeError):
    """Another process is training into this folder."""


_held = {}   # lock path -> [fd, holders] for the locks this process holds


class RunLock:
    """with RunLock(folder): ... holds the folder's lock; raises RunFolderBusy if another process has it.
    In the process that holds it already, it only counts one more holder."""

    def __init__(self, folder):
        self.path = Path(folder).resolve() / ".lock"
        self.fd = None

    def acquire(self):
        if fcntl is None or self.fd is not None:
            return self
        if self.path in _held:
            _held[self.path][1] += 1
            self.fd = _held[self.path][0]
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
        _held[self.path] = [fd, 1]
        return self

    def _names(self, fd):
        """Whether the lock path still names the file `fd` holds open."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self):
        if self.fd is not None:
            _held[self.path][1] -= 1
            if _held[self.path][1]:
                self.fd = None           # another holder in this process keeps it
                return
            del _held[self.path]
            try:
                self.path.unlink(missing_ok=True)  # deleted while still locked: no run can lock a stale file
            finally:
                os.close(self.fd)  # closing releases the flock
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def new_run_folder(root="runs"):
    """runs/<time>, or runs/<time>-2, -3 ... when runs start within the same second: created here,
    atomically, so two runs can never pick the same folder."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        out = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            continue
    raise OSError(f"could not create a new run folder next to {base}")


def check_out_folder(out, resume):
    """Fail before any data is loaded: a file in the way, a folder that cannot be written."""
    if out.exists() and not out.is_dir():
        raise OSError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to --out {out} ({e.strerror or e})") from None


@contextlib.contextmanager
def run_folder(out, resume, created, parent_too=False):
    """The run folder's life around a command: checked, locked (RunFolderBusy, naming the PID, if another run
    trains here), refused if it holds a finished run's checkpoint without --resume, held locked to the
    command's end, and removed again if the command fails before writing into a folder it `created`
    (and, with `parent_too`, its parent when that is left empty: the runs/ folder a default name made)."""
    from .checkpoint import CheckpointError
    try:
        check_out_folder(out, resume)
        with RunLock(out):
            if (out / "checkpoint.npz").exists() and not resume:
                raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue it or choose "
                                      "another --out")
            yield out
    except BaseException:
        if created and out.is_dir() and {f.name for f in out.iterdir()} <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
            if parent_too:
                with contextlib.suppress(OSError):
                    out.parent.rmdir()
        raise


def is_run_folder(folder):
    """Whether `folder` holds a minivit run: its checkpoint, its metrics, or a run's lock."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in ("checkpoint.npz", "metrics.jsonl", ".lock"))
