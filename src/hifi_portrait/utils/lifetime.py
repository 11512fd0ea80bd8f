"""Child processes that end with the process that started them, even when it is killed with ``kill -9``.

* :func:`die_with_parent`, called first thing in a worker process (e.g. a process pool's initializer): the worker
  ends as soon as its parent is gone (Linux: ``PR_SET_PDEATHSIG``; everywhere: a thread that polls the parent's
  pid twice a second), so a killed build never leaves workers writing shards behind it.
* :class:`ProcessTreeReaper`, for processes started by a library we do not control (a local Ray instance: its
  GCS, raylet, agents and workers): a small guardian process records the parent's descendants created since it
  started and kills them when the parent dies without calling :meth:`ProcessTreeReaper.close` (needs ``psutil``,
  which Ray depends on). Run as ``python -m hifi_portrait.utils.lifetime PARENT_PID SINCE``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

logger = logging.getLogger(__name__)

#: Seconds between two checks of the parent (watchdog thread and guardian process).
POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent:  # re-parented: the parent is gone
            os._exit(1)


def die_with_parent() -> None:
    """Make this process end when its parent process ends, however it ends (call it in the child)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no usable libc: the watchdog below suffices
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="hifi-parent-watch").start()


class ProcessTreeReaper:
    """Kills the descendants this process creates from now on if this process dies without :meth:`close`.

    Use it around code that starts processes we cannot make :func:`die_with_parent` themselves::

        reaper = ProcessTreeReaper()
        try:
            ray.init(...)
            ...
        finally:
            ray.shutdown()
            reaper.close()
    """

    def __init__(self) -> None:
        since = time.time() - 1.0  # create times are rounded; a process started just now must count
        self._guard = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), repr(since)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in our process group: a Ctrl-C or killpg aimed at us leaves it running
        )

    @property
    def pid(self) -> int:
        return self._guard.pid

    def close(self) -> None:
        """Normal end: the guardian exits without killing anything."""
        if self._guard.poll() is None:
            try:
                self._guard.stdin.write(b"done\n")
                self._guard.stdin.close()
            except OSError:
                pass
            try:
                self._guard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._guard.kill()


def _guard(parent_pid: int, since: float) -> int:
    """The guardian's loop: snapshot ``parent_pid``'s new descendants; on its death (EOF on stdin) kill them."""
    import psutil

    me = os.getpid()
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while True:
        try:
            for child in parent.children(recursive=True):
                if child.pid != me and child.pid not in known and child.create_time() >= since:
                    known[child.pid] = child
        except psutil.Error:
            pass
        ready, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "done":
                return 0
            if line == "":  # the write end closed without "done": the parent is gone
                break
        if not parent.is_running():
            break
    for proc in known.values():
        try:
            proc.kill()  # psutil checks the create time first: a reused pid is left alone
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), float(sys.argv[2])))
