"""A run directory belongs to one run at a time: `RUN_DIR/.lock` names its owner (pid, host, since when).

The lock file is created with O_CREAT|O_EXCL, so of two runs started into one directory exactly one gets
it; the other is refused before it writes anything. A lock whose owner died without releasing it (kill -9,
power loss) is recognised on the same host (its pid no longer runs) and may be taken over, which the
caller allows only when the user asked to continue (`--resume`) or to start afresh (`--overwrite`).
Under torchrun only rank 0 calls these functions.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pointlift.errors import PointliftDataError

LOCK_NAME = ".lock"


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: str  # local time the owner started, ISO 8601

    def describe(self) -> str:
        return f"pid {self.pid}@{self.host} since {self.since}"

    def is_dead(self) -> bool:
        """True only when the owner certainly no longer runs: same host, no such pid."""
        if self.host != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def read_owner(run_dir: str | Path) -> LockOwner | None:
    """The lock's owner; None when there is no lock. A lock being written this instant is read again
    briefly; one that stays unreadable names an unknown owner (pid 0), which is never taken as dead."""
    return _read_lock_file(lock_path(run_dir))


def _read_lock_file(path: Path) -> LockOwner | None:
    for _ in range(20):
        try:
            record = json.loads(path.read_text())
            return LockOwner(int(record["pid"]), str(record["host"]), str(record["since"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return LockOwner(0, "unknown", "unknown")


def try_acquire(run_dir: str | Path) -> LockOwner | None:
    """Take the lock of `run_dir` (which exists) for this process: None when taken, else the current owner.
    OSErrors other than "already locked" (read-only or full disk, permissions) name the lock file."""
    path = lock_path(run_dir)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join(sys.argv)[:500]}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        owner = read_owner(run_dir)
        return owner if owner is not None else try_acquire(run_dir)  # released meanwhile: try again
    except OSError as error:
        raise PointliftDataError(run_dir, f"cannot write in the run directory ({error.strerror or error})") from None
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    except OSError as error:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise PointliftDataError(path, f"cannot write the run directory's lock ({error.strerror or error})") from None
    os.close(fd)
    return None


def take_over(run_dir: str | Path, dead: LockOwner) -> LockOwner | None:
    """Replace the lock `dead` left: moved aside atomically (of two runs taking over at once, one wins),
    then taken as usual. None when taken, else the owner who got it first."""
    path = lock_path(run_dir)
    aside = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        pass  # another run moved it first; the O_EXCL below decides
    else:
        moved = _read_lock_file(aside)
        if moved != dead:  # another run took it over between our read and the move: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return moved
        aside.unlink(missing_ok=True)
    return try_acquire(run_dir)


def release(run_dir: str | Path) -> None:
    """Remove the lock if this process owns it (never another run's)."""
    owner = read_owner(run_dir)
    if owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname():
        lock_path(run_dir).unlink(missing_ok=True)
