"""trm_fast.atomic: a file is replaced whole or not at all, with the permissions open() would give."""
import os
import stat

import pytest

from trm_fast.atomic import atomic_write, atomic_write_json


def test_a_written_file_has_the_mode_of_a_plainly_opened_one(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_json(tmp_path / "sub" / "values.json", {"a": 1})
    assert written.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.bin"
    atomic_write(target, lambda stream: stream.write(b"old"), binary=True)

    def fail_halfway(stream):
        stream.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway, binary=True)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["checkpoint.bin"]
