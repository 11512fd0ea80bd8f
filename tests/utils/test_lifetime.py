"""Processes that end with their parent: die_with_parent (in the child) and ProcessTreeReaper (a guardian)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

psutil = pytest.importorskip("psutil")

#: A parent that starts a grandchild the given way, prints its pid, and waits to be killed.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from hifi_portrait.utils.lifetime import ProcessTreeReaper
    mode = sys.argv[1]
    if mode == "reaper":
        reaper = ProcessTreeReaper()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    else:
        code = "from hifi_portrait.utils.lifetime import die_with_parent; die_with_parent(); "
        code += "import time; time.sleep(300)"
        child = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.5)  # the guardian's first snapshot; the child's prctl
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["reaper", "die_with_parent"])
def test_a_grandchild_ends_when_its_parent_is_killed(mode):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    assert psutil.Process(child).is_running()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    try:
        assert _gone_within(child, 5.0), f"{mode}: the grandchild outlived its killed parent"
    finally:
        if not _gone_within(child, 0):
            os.kill(child, signal.SIGKILL)


def test_a_closed_reaper_kills_nothing():
    from hifi_portrait.utils.lifetime import ProcessTreeReaper

    reaper = ProcessTreeReaper()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(1.0)
    reaper.close()
    assert reaper._guard.poll() == 0  # the guardian has exited...
    assert psutil.Process(child.pid).is_running()  # ...and left our child alone
    child.kill()
    child.wait()
