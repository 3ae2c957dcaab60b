"""Faults every tool meets the same way: an output that cannot be written (a read-only file system, a
parent that is a file, a folder where a file goes or the reverse), input files nested without end, a
mapping that names a layer twice, a search's own checkpoint given as --pretrained. Each ends in one
line naming the user's path and a non-zero exit, and nothing is written.

Every tool runs in this process through run_cli, as its ``__main__`` runs it, on conftest's tiny runs.
The read-only file system is simulated where the tools meet the operating system (``os.open``,
``os.mkdir``, ``os.access``, ``os.statvfs``), so it needs no privileges; benchmarks/bad_input_table.py
measures the real one.
"""
import errno
import json
import os
import types

import pytest

from conftest import TinyRuns
from models import formats
from models.files import save_checkpoint

SIZE = TinyRuns.SIZE


def tool_main(name):
    """The entry point of a tool by its short name."""
    import importlib
    modules = {"filter": "tensor_analysis.tensor_memory_filter",
               "dual": "tensor_analysis.tensor_memory_filter_dualcore",
               "latency": "tensor_analysis.tensor_latency_predictor", "compression": "tensor_analysis.compression_calc",
               "model_table": "tensor_analysis.model_table", "generate": "tensor_analysis.generate_results",
               "summarize": "Search_CIFAR10.dnas.summarize_runs", "sweep": "Search_CIFAR10.dnas.plot_sweep",
               "report": "Search_CIFAR10.make_report", "pretrain": "Search_CIFAR10.pretrain.trainer",
               "stage1": "Search_CIFAR10.dnas.dnas_search_cifar10_mbv2",
               "stage2": "Search_CIFAR10.dnas_multicore.dnas_cifar10_search_multicore_mbv2",
               "profile_lut": "tensor_analysis.profile_to_lut", "profile_m7": "deploy.profile_m7"}
    return importlib.import_module(modules[name]).main


# tool → (its output is a folder, argv writing to OUT)
WRITERS = {
    "filter": (False, lambda t, out: SIZE + ["--quiet", "--output_file", out]),
    "dual": (False, lambda t, out: SIZE + ["--quiet", "--output_file", out]),
    "latency": (False, lambda t, out: SIZE + ["--quiet", "--lut", out]),
    "compression": (False, lambda t, out: SIZE + ["--output_file", out]),
    "model_table": (False, lambda t, out: ["--models", "mobilenetv2", "--sizes", "16", "--width_mult", "0.1",
                                           "--num_classes", "10", "--output_file", out]),
    "summarize": (False, lambda t, out: [t.root / "runs", "--csv", out]),
    "report": (False, lambda t, out: ["--runs", t.root / "runs", "--output", out]),
    "generate": (True, lambda t, out: ["--output_dir", out]),
    "sweep": (True, lambda t, out: ["--runs", t.root / "runs", "--output_dir", out]),
    "pretrain": (True, lambda t, out: TinyRuns.PRETRAIN + ["--output_dir", out]),
    "stage1": (True, lambda t, out: t.stage1_argv("--output_dir", out)),
    "stage2": (True, lambda t, out: t.stage2_argv("--output_dir", out)),
    # outputs are checked before the inputs are read, so these inputs need not exist
    "profile_lut": (False, lambda t, out: ["--profile", t.root / "profile.json", "--output_lut", out]),
    "profile_m7": (False, lambda t, out: ["--export_dir", t.root / "c", "--output_json", out]),
}


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder on a simulated read-only file system: writes below it fail with EROFS."""
    root = tmp_path / "read_only"
    root.mkdir()
    prefix = str(root)
    real = {name: getattr(os, name) for name in ("open", "mkdir", "access", "statvfs")}

    def below(path):
        return os.path.abspath(os.fspath(path)).startswith(prefix)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def fake_open(path, flags, *args, **kwargs):
        if below(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if below(path):
            refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def fake_access(path, mode, *args, **kwargs):
        return False if below(path) and mode & os.W_OK else real["access"](path, mode, *args, **kwargs)

    def fake_statvfs(path):
        return types.SimpleNamespace(f_flag=os.ST_RDONLY) if below(path) else real["statvfs"](path)
    for name, fake in (("open", fake_open), ("mkdir", fake_mkdir), ("access", fake_access), ("statvfs", fake_statvfs)):
        monkeypatch.setattr(os, name, fake)
    return root


def one_line(code, err):
    assert code != 0 and len(err) == 1 and err[0].startswith("error: "), err
    assert ".tmp" not in err[0], f"the temporary file is named instead of the user's path: {err[0]}"
    return err[0]


@pytest.mark.parametrize("tool", list(WRITERS))
def test_an_output_on_a_read_only_file_system(tool, tiny_runs, read_only, run_main):
    is_folder, argv = WRITERS[tool]
    out = read_only / "out"
    line = one_line(*run_main(tool_main(tool), argv(tiny_runs, out)))
    assert str(out) in line and "read-only file system" in line, line


@pytest.mark.parametrize("tool", list(WRITERS))
def test_an_output_below_a_file(tool, tiny_runs, tmp_path, run_main):
    is_folder, argv = WRITERS[tool]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    line = one_line(*run_main(tool_main(tool), argv(tiny_runs, blocker / "sub" / "out")))
    assert f"{blocker} is a file, not a folder" in line and str(blocker / "sub" / "out") in line, line
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize("tool", list(WRITERS))
def test_a_folder_where_a_file_goes_and_a_file_where_a_folder_goes(tool, tiny_runs, tmp_path, run_main):
    is_folder, argv = WRITERS[tool]
    out = tmp_path / "taken"
    if is_folder:
        out.write_text("a file of the user's\n")
    else:
        out.mkdir()
    line = one_line(*run_main(tool_main(tool), argv(tiny_runs, out)))
    assert str(out) in line and ("is a file" if is_folder else "is a folder") in line, line
    assert (out.read_text() == "a file of the user's\n") if is_folder else os.listdir(out) == []


# ----------------------------------------------------------------------------------------------------
# Input files nested without end, or naming a layer twice
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    path = tmp_path_factory.mktemp("deep") / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.mark.parametrize("tool, argv", [
    ("stage1", lambda t, d: ["--tensor_analysis_json", d, *t.SEARCH, "--output_dir", t.root / "never"]),
    ("stage1", lambda t, d: ["--tensor_analysis_json", t.root / "a.json", "--latency_lut", d, *t.SEARCH,
                             "--output_dir", t.root / "never"]),
    ("latency", lambda t, d: SIZE + ["--precision_mapping_file", d]),
    ("latency", lambda t, d: SIZE + ["--hardware", d]),
    ("compression", lambda t, d: ["--analysis", d]),
    ("stage2", lambda t, d: t.stage2_argv("--dual_analysis_json", d, "--output_dir", t.root / "never")),
], ids=["analysis", "lut", "mapping", "profile", "compression-analysis", "dual-analysis"])
def test_a_deeply_nested_input_is_one_line(tool, argv, tiny_runs, deep, run_main):
    line = one_line(*run_main(tool_main(tool), argv(tiny_runs, deep)))
    assert f"{deep}: JSON nested too deeply to read" in line
    assert not (tiny_runs.root / "never").exists()


def test_a_deeply_nested_summary_is_skipped_with_a_warning_and_the_others_still_listed(tiny_runs, deep, tmp_path,
                                                                                      run_main, capsys):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs.root / "runs", runs)
    (runs / "deep").mkdir()
    shutil.copy(deep, runs / "deep" / "summary.json")
    for tool, argv in (("summarize", [runs]), ("report", ["--runs", runs, "--output", tmp_path / "report.md"])):
        code, err = run_main(tool_main(tool), argv)
        assert code == 0 and err == [f"warning: {runs}/deep/summary.json: JSON nested too deeply to read (no file of "
                                     f"this project nests more than a few levels) (skipped)"], err


@pytest.mark.parametrize("tool", ["latency", "compression"])
def test_a_mapping_naming_a_layer_twice_is_refused(tool, tiny_runs, tmp_path, run_main):
    names = [layer["name"] for layer in json.loads((tiny_runs.root / "a.json").read_text())["layers"]]
    text = "{" + ", ".join(f'"{n}": "int8"' for n in names) + f', "{names[0]}": "fp32"' + "}"
    (tmp_path / "twice.json").write_text(text)
    line = one_line(*run_main(tool_main(tool), SIZE + ["--precision_mapping_file", tmp_path / "twice.json"]))
    assert f"twice.json: the key '{names[0]}' appears twice in one object" in line


def test_a_run_mapping_naming_a_layer_twice_stops_the_sweep(tiny_runs, tmp_path, run_main):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs.root / "runs", runs)
    text = (runs / "s1" / "mapping.json").read_text()
    first = next(iter(json.loads(text)["layers"]))
    (runs / "s1" / "mapping.json").write_text(text.replace(f'"{first}":', f'"{first}": "fp32", "{first}":', 1))
    line = one_line(*run_main(tool_main("sweep"), ["--runs", runs, "--output_dir", tmp_path / "sweep"]))
    assert f"s1/mapping.json: the key '{first}' appears twice" in line
    assert not (tmp_path / "sweep").exists()


def test_the_sweep_blames_the_run_whose_mapping_is_wrong_not_the_fp32_reference(tiny_runs, tmp_path, run_main):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs.root / "runs" / "s1", runs / "a_first")  # read first: the reference copied its names
    shutil.copytree(tiny_runs.root / "runs" / "s1", runs / "b_second")
    doc = json.loads((runs / "a_first" / "mapping.json").read_text())
    missing = next(iter(doc["layers"]))
    del doc["layers"][missing]
    (runs / "a_first" / "mapping.json").write_text(json.dumps(doc))
    line = one_line(*run_main(tool_main("sweep"), ["--runs", runs, "--output_dir", tmp_path / "sweep"]))
    assert line.startswith(f"error: {runs}/a_first/mapping.json: layer names do not match the model: missing layers: "
                           f"{missing}"), line


# ----------------------------------------------------------------------------------------------------
# A search's own checkpoints as --pretrained
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, what", [("final.pt", "a search's fine-tuned network (final.pt)"),
                                        ("supernet.pt", "a search's supernet (supernet.pt)"),
                                        ("checkpoint_last.pt", "a search's resumable checkpoint (checkpoint_last.pt)")])
def test_a_search_checkpoint_as_pretrained_says_what_it_is_and_what_is_expected(name, what, tiny_runs, run_main):
    ckpt = tiny_runs.root / "runs" / "s1" / name
    argv = tiny_runs.stage1_argv("--output_dir", tiny_runs.root / "never", pretrained=ckpt)
    line = one_line(*run_main(tool_main("stage1"), argv))
    assert line == (f"error: --pretrained {ckpt}: {what}; expected the FP32 network of Search_CIFAR10/pretrain/"
                    f"pretrain_cifar10_mobilenetv2.py (its best.pt, schema {formats.PRETRAIN_CHECKPOINT!r})")


def test_a_pretraining_checkpoint_with_tensors_of_another_shape_is_one_line(tiny_runs, tmp_path, run_main):
    from models.files import load_checkpoint
    ckpt = load_checkpoint(str(tiny_runs.root / "pre" / "best.pt"))
    first = next(k for k in ckpt["model"] if k.endswith(".weight"))
    ckpt["model"][first] = ckpt["model"][first][:1]
    save_checkpoint(ckpt, str(tmp_path / "reshaped.pt"))
    argv = tiny_runs.stage1_argv("--output_dir", tiny_runs.root / "never", pretrained=tmp_path / "reshaped.pt")
    line = one_line(*run_main(tool_main("stage1"), argv))
    assert f"--pretrained {tmp_path}/reshaped.pt: tensors of another shape: {first}" in line
