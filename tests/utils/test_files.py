"""atomic_file: the target is replaced whole or left untouched, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from hifi_portrait.utils.files import atomic_file


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "shard.bin"
    with atomic_file(target, ".bin", fsync=True) as handle:
        handle.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_file(target, ".bin") as handle:
        handle.write(b"half-written")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["shard.bin"]


def test_atomic_file_gives_the_umask_mode_and_a_full_disk_a_typed_error(tmp_path, monkeypatch):
    import errno
    import os
    import stat

    from hifi_portrait.errors import OutputError
    from hifi_portrait.utils import files

    old = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027
        with atomic_file(tmp_path / "a.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    with pytest.raises(OutputError, match=r"cannot write to .*no space left"), atomic_file(tmp_path / "b.bin"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    # an error about another file (an input read while writing) is not dressed up as an output error
    with pytest.raises(PermissionError), files.writing_to(tmp_path / "out"):
        raise PermissionError(errno.EACCES, "Permission denied", "/elsewhere/input.jpg")


def test_not_a_regular_file_names_what_the_path_is(tmp_path):
    import os

    from hifi_portrait.utils.files import not_a_regular_file

    (tmp_path / "file").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert not_a_regular_file(tmp_path / "file") is None and not_a_regular_file(tmp_path / "link") is None
    assert "named pipe" in not_a_regular_file(tmp_path / "fifo")
    assert "dangling" in not_a_regular_file(tmp_path / "dangling")
    assert "loop" in not_a_regular_file(tmp_path / "loop")
    assert "folder" in not_a_regular_file(tmp_path)
    assert not_a_regular_file(tmp_path / "nothing") == "no such file"
