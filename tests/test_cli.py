"""What every command-line tool shares (tensor_analysis/cli.py): the output check every file-writing
tool runs before any work, run_cli's one line for bad input, a refusing file system and signals, and
the number types every numeric flag of every tool uses."""
import argparse
import errno
import json
import os
import signal

import pytest

from models import formats
from models.files import FileWriteError
from tensor_analysis.cli import (EXIT_TERMINATED, check_outputs, json_kind, note_on_interrupt, run_cli,
                                 text_kind)

ANALYSIS = json_kind(formats.ANALYSIS, "an analysis file")
REPORT = text_kind("a report", "# AdaptQNet report")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------------------------------
# check_outputs
# ----------------------------------------------------------------------------------------------------
def test_an_output_never_replaces_an_input_even_with_overwrite(tmp_path):
    mapping = write(tmp_path / "mapping.json", json.dumps({"schema": formats.MAPPING, "layers": {}}))
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"--lut .*mapping.json: is one of this command's inputs "
                                             r"\(--precision_mapping_file\)"):
            check_outputs([("--lut", mapping, ANALYSIS)], [("--precision_mapping_file", mapping)], overwrite)
    # the same file under another name (a symlink) is the same file
    os.symlink(mapping, tmp_path / "alias.json")
    with pytest.raises(ValueError, match="is one of this command's inputs"):
        check_outputs([("--lut", str(tmp_path / "alias.json"), ANALYSIS)], [("--map", mapping)], True)


def test_an_existing_file_is_replaced_only_when_it_is_the_tools_kind(tmp_path):
    own = write(tmp_path / "own.json", json.dumps({"schema": formats.ANALYSIS}))
    older = write(tmp_path / "older.json", json.dumps({"schema": "adaptqnet/analysis/0"}))
    other = write(tmp_path / "lut.json", json.dumps({"schema": formats.LUT}))
    text = write(tmp_path / "notes.json", "my notes\n")
    empty = write(tmp_path / "empty.json", "")
    check_outputs([("--output_file", own, ANALYSIS), ("--also", older, ANALYSIS), ("--e", empty, ANALYSIS)])
    for path in (other, text):
        with pytest.raises(ValueError, match=r"exists and is not an analysis file; pass --overwrite"):
            check_outputs([("--output_file", path, ANALYSIS)])
        check_outputs([("--output_file", path, ANALYSIS)], overwrite=True)
    report = write(tmp_path / "report.md", "# AdaptQNet report: x\n")
    check_outputs([("--output", report, REPORT)])
    with pytest.raises(ValueError, match="exists and is not a report"):
        check_outputs([("--output", other, REPORT)])


def test_folders_files_in_the_way_and_two_outputs_on_one_file(tmp_path):
    (tmp_path / "folder").mkdir()
    blocker = write(tmp_path / "a_file", "x")
    with pytest.raises(ValueError, match=r"--output_file .*folder: is a folder; expected a file name"):
        check_outputs([("--output_file", str(tmp_path / "folder"), ANALYSIS)])
    with pytest.raises(ValueError, match=rf"--output_file .*deep/x.json: {blocker} is a file, not a folder"):
        check_outputs([("--output_file", os.path.join(blocker, "deep", "x.json"), ANALYSIS)])
    out = str(tmp_path / "new" / "x.json")
    with pytest.raises(ValueError, match=r"--lut .*x.json: is also --output_file; give each output its own file"):
        check_outputs([("--output_file", out, ANALYSIS), ("--lut", out, ANALYSIS)])
    check_outputs([("--output_file", out, ANALYSIS), ("--lut", None, ANALYSIS)])
    assert not (tmp_path / "new").exists(), "checking writes nothing"


def test_a_folder_that_cannot_be_written_is_named_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
    with pytest.raises(ValueError, match=rf"--csv {tmp_path}/t.csv: cannot write in {tmp_path} "
                                         r"\((read-only file system|permission denied)\)"):
        check_outputs([("--csv", str(tmp_path / "t.csv"), REPORT)])


# ----------------------------------------------------------------------------------------------------
# run_cli
# ----------------------------------------------------------------------------------------------------
def test_file_system_errors_become_one_line_naming_the_users_path(tmp_path, run_main):
    def refused(argv):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "their.json"))

    def ours(argv):
        raise FileWriteError(f"{tmp_path}/out.json: cannot write (read-only file system)", errno.EROFS)
    assert run_main(refused, []) == (2, [f"error: {tmp_path}/their.json: permission denied"])
    assert run_main(ours, []) == (2, [f"error: {tmp_path}/out.json: cannot write (read-only file system)"])


def test_sigterm_ends_in_one_line_with_what_the_run_registered(run_main):
    def main(argv):
        note_on_interrupt(lambda: "the last checkpoint is kept: resume with --resume --output_dir X")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM must interrupt the main thread")
    before = signal.getsignal(signal.SIGTERM)
    code, err = run_main(main, [])
    assert code == EXIT_TERMINATED == 143
    assert err == ["terminated; the last checkpoint is kept: resume with --resume --output_dir X"]
    assert signal.getsignal(signal.SIGTERM) is before, "the handler is the caller's again"

    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_main(interrupted, []) == (130, ["interrupted"]), "notes do not outlive their run"


def test_run_cli_passes_bugs_through_with_their_traceback():
    def buggy(argv):
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        run_cli(buggy, [])


# ----------------------------------------------------------------------------------------------------
# Numeric flags
# ----------------------------------------------------------------------------------------------------
def tool_parsers():
    """Every command-line tool's parser (the search stages add their groups to a plain parser)."""
    from Search_CIFAR10 import make_report
    from Search_CIFAR10.dnas import plot_sweep, summarize_runs
    from Search_CIFAR10.dnas.stage1 import add_stage1_args
    from Search_CIFAR10.dnas_multicore.stage2 import add_stage2_args
    from Search_CIFAR10.pretrain.trainer import build_parser as pretrain_parser
    from tensor_analysis import (compression_calc, model_table, tensor_latency_predictor, tensor_memory_filter,
                                 tensor_memory_filter_dualcore)
    stage1, stage2 = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_stage1_args(stage1)
    add_stage2_args(stage2)
    return {"pretrain": pretrain_parser(), "stage1": stage1, "stage2": stage2,
            "memory filter": tensor_memory_filter.build_parser(),
            "dual filter": tensor_memory_filter_dualcore.build_parser(),
            "latency predictor": tensor_latency_predictor.build_parser(),
            "compression": compression_calc.build_parser(), "model table": model_table.build_parser(),
            "summarize": summarize_runs.build_parser(), "sweep": plot_sweep.build_parser(),
            "report": make_report.build_parser()}


def test_every_numeric_flag_of_every_tool_refuses_inf_and_nan():
    checked = 0
    for tool, parser in tool_parsers().items():
        for action in parser._actions:
            kind = action.type
            assert kind not in (int, float), f"{tool} {action.option_strings}: a bare {kind.__name__} accepts inf/nan"
            if getattr(kind, "__qualname__", "").startswith("number_type"):
                for text in ("inf", "nan", "-inf"):
                    with pytest.raises(argparse.ArgumentTypeError):
                        kind(text)
                checked += 1
    assert checked > 40
