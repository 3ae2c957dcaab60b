"""Reading and writing files (models/files.py): a write that fails names the user's path and leaves the
old file whole, JSON that repeats a key or nests without end is refused with one line, and a
checkpoint that would run code is never loaded."""
import errno
import os
import tempfile

import pytest
import torch

from models.files import (CheckpointError, FileFormatError, FileWriteError, atomic_write, load_checkpoint, read_json,
                          write_json_atomic)


def no_temporary_files(folder):
    return not [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_write_errors_name_the_target_never_the_temporary_file(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileWriteError, match=rf"^{blocker}/sub/out.json: {blocker} is a file, not a folder$"):
        write_json_atomic({}, str(blocker / "sub" / "out.json"))
    with pytest.raises(FileWriteError, match=rf"^{tmp_path}/folder: is a folder; expected a file name$"):
        write_json_atomic({}, str(tmp_path / "folder"))
    assert no_temporary_files(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(str(tmp_path), ".tmp_out.json123"))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(FileWriteError, match=rf"^{tmp_path}/out.json: cannot write \(read-only file system\)$") as e:
        write_json_atomic({}, str(tmp_path / "out.json"))
    assert e.value.errno == errno.EROFS and ".tmp" not in str(e.value)


def test_a_write_that_fails_halfway_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic({"test": 97.2}, str(target))

    def disk_full(f):
        f.write(b'{"test": ')
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(FileWriteError, match=r"summary.json: cannot write \(no space left on the device\)"):
        atomic_write(str(target), disk_full)
    assert read_json(str(target)) == {"test": 97.2} and no_temporary_files(tmp_path)


def test_json_repeating_a_key_is_refused_wherever_it_nests(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text('{"layers": {"features.0.0": "int8", "classifier.1": "int4", "features.0.0": "fp32"}}')
    with pytest.raises(FileFormatError, match=r"mapping.json: the key 'features.0.0' appears twice in one object"):
        read_json(str(path))
    path.write_text('{"a": 1, "b": {"a": 2}}')  # the same key in different objects is fine
    assert read_json(str(path)) == {"a": 1, "b": {"a": 2}}


def test_json_nested_without_end_is_one_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # 200 KB
    with pytest.raises(FileFormatError, match=r"summary.json: JSON nested too deeply to read"):
        read_json(str(path))
    path.write_text('{"a": ' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(FileFormatError, match="nested too deeply"):
        read_json(str(path))


def test_a_folder_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileFormatError, match=rf"^{tmp_path}: is a folder; expected a latency table$"):
        read_json(str(tmp_path), "latency table")
    with pytest.raises(FileFormatError, match=r"nope.json: latency table not found"):
        read_json(str(tmp_path / "nope.json"), "latency table")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused_without_advice_to_load_it_anyway(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"schema": "adaptqnet/pretrain/1", "model": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(tmp_path / "evil.pt"))
    message = str(e.value)
    assert message.startswith(f"{tmp_path}/evil.pt: not an AdaptQNet checkpoint") and "system" in message
    assert "weights_only" not in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:64])
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable checkpoint \(RuntimeError: [^\n]*\)$"):
        load_checkpoint(str(tmp_path / "cut.pt"))
