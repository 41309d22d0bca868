"""Claims: which process is computing which run, so that studies share one folder.

Before a run starts, its study process creates ``runs/<key>.claim`` with ``O_EXCL``
(atomic on a local file system): a second ``bnbench study`` on the same folder skips a
claimed run and waits for its record instead of computing it twice. A claim names its
owner (host, pid and the process's start time, so a recycled pid is not mistaken for
the owner); a claim whose owner died (``kill -9``, a crash, a reboot) is recovered by
the next process that finds it. A claim from another host cannot be checked from here
and is respected until it is removed (delete ``runs/*.claim`` by hand if that host is
gone). Claims are removed when their run's record is written or the owner stops.
"""

import json
import os
import platform
import time
from pathlib import Path

SUFFIX = ".claim"


def _start_time(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux), ``None``
    where ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def owner():
    """This process as a claim owner."""
    return {"host": platform.node(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def alive(who):
    """Whether the claim owner ``who`` may still be running (``True`` for another
    host's or an unreadable owner: it cannot be checked from here)."""
    if not isinstance(who, dict) or who.get("host") != platform.node():
        return True
    pid = who.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    start = _start_time(pid)
    return who.get("start") is None or start is None or start == who["start"]


class Claims:
    """The claims of one runs folder, held by this process."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.me = owner()
        self.held = set()

    def path(self, key):
        return self.folder / f"{key}{SUFFIX}"

    def read(self, key):
        try:
            return json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None

    def acquire(self, key):
        """Claim run ``key``; ``False`` if a live owner holds it. A dead owner's claim
        is taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held_by = self.read(key)
                if held_by is not None and alive(held_by.get("owner")):
                    return False
                if held_by is None and self._young(key):  # being written right now
                    return False
                self._remove(key)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"owner": self.me, "claimed_unix": time.time()}, f)
            self.held.add(key)
            return True
        return False

    def _young(self, key, seconds=5.0):
        try:
            return time.time() - self.path(key).stat().st_mtime < seconds
        except OSError:
            return False

    def _remove(self, key):
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def held_elsewhere(self, key):
        """Whether another live process holds run ``key``."""
        held_by = self.read(key)
        if held_by is None:
            return self.path(key).exists() and self._young(key)
        return held_by.get("owner") != self.me and alive(held_by.get("owner"))

    def release(self, key):
        if key in self.held:
            self._remove(key)
            self.held.discard(key)

    def release_all(self):
        for key in list(self.held):
            self.release(key)
