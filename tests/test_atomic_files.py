"""atomic_files.atomic_write: the target is replaced whole when the block ends, and left as it was, with no temporary
file beside it, when the block raises."""
import os

import pytest

from plumbing.atomic_files import atomic_write


def test_the_file_is_replaced_whole_and_no_temporary_is_left(tmp_path):
    path = str(tmp_path / "f.bin")
    with atomic_write(path) as f:
        f.write(b"first")
        assert f.name == f"{path}.{os.getpid()}.tmp" and not os.path.exists(path)  # written under its temporary name
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("second, é")
    assert open(path, encoding="utf-8").read() == "second, é" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("tmp", [None, "fixed"])
def test_an_error_in_the_block_leaves_the_old_file_and_no_temporary(tmp_path, tmp):
    path = str(tmp_path / "f.txt")
    with atomic_write(path, "w") as f:
        f.write("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "w", tmp=tmp and str(tmp_path / "f.txt.tmp")) as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_only_whole_writes(tmp_path):
    with pytest.raises(ValueError, match="mode 'ab'"):
        with atomic_write(str(tmp_path / "f"), "ab"):
            pass
