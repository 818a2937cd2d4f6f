"""Files written all at once or not at all.

A crash, a kill -9 or a full disk in the middle of a write must never leave a half file where a
whole one was: checkpoints, metrics, caches and exported weights are written to a temporary
beside their destination (named with the process's PID, so two writers never share one), flushed
to disk, and renamed over the destination in one step (os.replace is atomic on POSIX and Windows).
If anything fails, the temporary is removed, so it cannot fill the disk, and the old file stays.
"""
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path):
    """with atomic_write(path) as f: write bytes to the binary file f; path appears only when all went well."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text):
    """The text file `path`, written through atomic_write."""
    with atomic_write(path) as f:
        f.write(text.encode())


def remove_stale_temporaries(path):
    """Delete the temporaries that killed writers left beside `path` (`<name>.<PID>.tmp` of a PID that
    no longer runs): a kill -9 gives atomic_write no chance to clean up. A live writer's is kept. (On a
    folder shared between machines a PID names a process of this machine only: another machine's live
    writer would lose its write, which for a cache costs a rebuild, no more.)"""
    path = Path(path)
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid):
    try:
        os.kill(pid, 0)          # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):   # (a number too large to be a PID)
        return False
    except PermissionError:      # it exists, under another user
        return True
    return True
