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
