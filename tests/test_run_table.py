"""The batch launcher (run_all_dnas.sh) and the table of run summaries (summarize_runs.py)."""
import csv
import json
import os
import signal
import sys
import textwrap
import time

import pytest

from Search_CIFAR10.reporting import run_table as run_summary

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DNAS = os.path.join(REPO, "Search_CIFAR10", "dnas")
LAUNCHER = os.path.join(DNAS, "run_all_dnas.sh")
SUMMARIZE = os.path.join(DNAS, "summarize_runs.py")


def summary(size=32, lam=0.5, int_only=False, dataset="digits", test=93.25, val=94.0, latency=12.3456,
            ram=96.5, flash=410.25, compression=7.84, search=312.4, finetune=50.0, profile="stm32h747"):
    return {"args": {"input_size": size, "hardware_weight": lam, "int_only": int_only, "dataset": dataset},
            "accuracy": {"fp32_val": 95.0, "fp32_test": 94.5, "supernet_val": 90.0,
                         "derived_val_before_finetune": 91.0, "finetuned_val": val, "test": test},
            "hardware": {"profile": profile, "latency_ms": latency, "peak_ram_kb": ram, "flash_kb": flash,
                         "compression": compression},
            "time_s": {"search": search, "finetune": finetune},
            "precision_histogram": {"int8": 40, "int4": 13}}


def write_run(root, name, content):
    folder = root / name
    folder.mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / "summary.json").write_text(text)
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "batch"
    write_run(root, "mixed_32px_lam0.5", summary())
    write_run(root, "int_only_32px_lam1", summary(lam=1, int_only=True, test=90.5, val=91.125, latency=9.5))
    # an interrupted run: no fine-tune, no hardware section, no args inside but an args.json beside it
    folder = write_run(root / "nested", "mixed_112px_lam0.1",
                       {"accuracy": {"supernet_val": 80.0, "derived_val_before_finetune": 81.5}})
    (folder / "args.json").write_text(json.dumps({"input_size": 112, "hardware_weight": 0.1,
                                                  "int_only": False, "dataset": "digits"}))
    return root


def test_rows_carry_the_summary_values(runs):
    rows, problems = run_summary.collect_runs(str(runs))
    assert problems == []
    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == {"mixed_32px_lam0.5", "int_only_32px_lam1", os.path.join("nested", "mixed_112px_lam0.1")}
    mixed = by_run["mixed_32px_lam0.5"]
    assert mixed == {"run": "mixed_32px_lam0.5", "dataset": "digits", "profile": "stm32h747", "input_size": 32,
                     "hardware_weight": 0.5, "int_only": False, "test_acc": 93.25, "val_acc": 94.0,
                     "latency_ms": 12.3456, "peak_ram_kb": 96.5, "flash_kb": 410.25, "compression": 7.84,
                     "search_time_s": 312.4, "finetune_time_s": 50.0}
    partial = by_run[os.path.join("nested", "mixed_112px_lam0.1")]
    assert partial["input_size"] == 112 and partial["hardware_weight"] == 0.1  # from args.json
    assert partial["val_acc"] == 81.5  # the latest stage reached
    assert partial["test_acc"] is None and partial["latency_ms"] is None
    # sorted by dataset, profile, size, int_only, λ
    assert [r["run"] for r in rows][:2] == ["mixed_32px_lam0.5", "int_only_32px_lam1"]


def test_table_is_aligned_and_shows_missing_values_as_dashes(runs):
    rows, _ = run_summary.collect_runs(str(runs))
    lines = run_summary.format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["run", "dataset", "profile", "size"]
    assert len(lines) == 2 + 3
    mixed = next(line for line in lines if line.startswith("mixed_32px_lam0.5"))
    for cell in ("digits", "stm32h747", "32", "0.5", "no", "93.25", "94.00", "12.35", "96.5", "410.2", "7.8x",
                 "5m12s", "50.0s"):
        assert f" {cell}" in f" {mixed} ", cell
    partial = next(line for line in lines if line.startswith("nested"))
    assert partial.split()[2] == "-"  # no profile
    assert partial.split().count("-") >= 6
    # right-aligned numbers: the test accuracy column ends at the same place in every row
    header_end = lines[0].index("test acc") + len("test acc")
    body = [line for line in lines[2:] if not line.startswith("nested")]
    assert all(line[header_end - 5:header_end] in ("93.25", "90.50") for line in body)


def test_durations_and_values_format():
    assert run_summary.format_duration(12.34) == "12.3s"
    assert run_summary.format_duration(312.4) == "5m12s"
    assert run_summary.format_duration(3723) == "1h02m03s"
    assert run_summary.format_value("int_only", True) == "yes"
    assert run_summary.format_value("test_acc", None) == "-"
    assert run_summary.format_value("test_acc", 0.9123) == "0.912"


def test_malformed_summaries_are_reported_and_skipped(runs):
    write_run(runs, "broken_json", "{not json")
    write_run(runs, "a_list", "[1, 2]")
    write_run(runs, "wrong_types", {"args": "oops", "accuracy": {"test": "high"}, "hardware": [1]})
    rows, problems = run_summary.collect_runs(str(runs))
    assert sorted(os.path.basename(os.path.dirname(p)) for p, _ in problems) == ["a_list", "broken_json"]
    assert any("not valid JSON" in message for _, message in problems)
    assert any("expected a JSON object" in message for _, message in problems)
    wrong = next(r for r in rows if r["run"] == "wrong_types")
    assert wrong["test_acc"] is None and wrong["dataset"] is None
    assert len(rows) == 4


def test_cli_prints_the_table_and_writes_csv_and_markdown(run_python, runs, tmp_path):
    write_run(runs, "broken", "{")
    out_csv, out_md = tmp_path / "t" / "table.csv", tmp_path / "table.md"
    result = run_python([SUMMARIZE, str(runs), "--csv", str(out_csv), "--markdown", str(out_md)], cwd=DNAS,
                        timeout=60, pythonpath=False)
    assert result.returncode == 0, result.stderr
    assert "mixed_32px_lam0.5" in result.stdout and "3 run(s), 1 skipped" in result.stdout
    assert f"warning: {runs / 'broken' / 'summary.json'}: not valid JSON" in result.stderr
    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    row = next(r for r in table if r["run"] == "int_only_32px_lam1")
    assert row["int_only"] == "true" and float(row["test_acc"]) == 90.5 and row["input_size"] == "32"
    assert next(r for r in table if r["run"].startswith("nested"))["test_acc"] == ""
    markdown = out_md.read_text().splitlines()
    assert markdown[0].startswith("| run | dataset |") and len(markdown) == 2 + 3


def test_cli_fails_only_when_no_summary_is_readable(run_python, tmp_path):
    write_run(tmp_path, "broken", "{")
    result = run_python([SUMMARIZE, str(tmp_path)], timeout=60, pythonpath=False)
    assert result.returncode == 2
    assert "none of the 1 summary.json files could be read" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_python([SUMMARIZE, str(tmp_path / "absent")], timeout=60, pythonpath=False)
    assert result.returncode == 2 and "folder not found" in result.stderr


# ---------------------------------------------------------------------------------------------------
# run_all_dnas.sh
# ---------------------------------------------------------------------------------------------------
def analysis_files(folder, sizes=(32, 112, 144), width="0.35"):
    folder.mkdir(exist_ok=True)
    for size in sizes:
        (folder / f"mobilenetv2_w{width}_s{size}_512kb.json").write_text("{}")
    return str(folder / "mobilenetv2_w{width}_s{size}_{threshold}kb.json")


@pytest.fixture(scope="session")
def launcher(run_process):
    """run_all_dnas.sh with ``args`` (the user's environment: PYTHONPATH as the caller has it)."""
    return lambda args, env=None, cwd=None, timeout=60: run_process(["bash", LAUNCHER] + args, cwd=cwd, env=env,
                                                                   timeout=timeout, pythonpath="PYTHONPATH" in os.environ)


def commands(stdout):
    return [line for line in stdout.splitlines() if line.startswith("nohup ")]


def test_dry_run_prints_the_batch(launcher, tmp_path):
    pattern = analysis_files(tmp_path / "analysis")
    result = launcher(["--dry_run", "--width_mult", "0.35", "--analysis_pattern", pattern,
                       "--output_root", str(tmp_path / "out"), "--lambdas", "0 0.5 2", "--epochs", "3",
                       "--dataset", "digits", "--extra", "--device cpu"], env={"PYTHON": "/opt/py/bin/python"})
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    # 32 px: mixed and INT-only × 3 λ; 112 and 144 px: mixed and INT-only at the base λ
    assert len(lines) == 6 + 2 + 2
    for line in lines:
        assert line.startswith("nohup /opt/py/bin/python dnas_search_cifar10_mbv2.py --tensor_analysis_json ")
        assert "--epochs 3" in line and "--dataset digits" in line and line.rstrip().endswith("2>&1 &")
        assert " --device cpu " in line
    int_only = [line for line in lines if "--int_only" in line]
    assert len(int_only) == 5
    for lam in ("0", "0.5", "2"):
        chosen = [line for line in lines if f"--hardware_weight {lam} " in line and "--input_size 32 " in line]
        assert len(chosen) == 2, lam
    assert sum("--input_size 112 --hardware_weight 0.1 " in line for line in lines) == 1
    assert sum("--input_size 144 --int_only --hardware_weight 0.1 " in line for line in lines) == 1
    assert str(tmp_path / "analysis" / "mobilenetv2_w0.35_s144_512kb.json") in result.stdout
    first = lines[0]
    assert f"--output_dir {tmp_path}/out/digits_mbv2_w0.35_mixed_32px_lam0 " in first
    assert f"> {tmp_path}/out/logs/digits_mbv2_w0.35_mixed_32px_lam0.log" in first
    assert f"summarize_runs.py {tmp_path}/out" in result.stdout
    assert not (tmp_path / "out").exists()  # a dry run creates nothing


def test_dry_run_relative_paths_are_the_callers_and_done_runs_are_skipped(launcher, tmp_path):
    analysis_files(tmp_path / "analysis", sizes=(32,))
    (tmp_path / "ck.pt").write_bytes(b"x")
    done = tmp_path / "out" / "mbv2_w0.35_mixed_32px_lam1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    args = ["--dry_run", "--width_mult", "0.35", "--sizes", "32", "--lambdas", "0 1", "--modes", "mixed",
            "--analysis_pattern", "analysis/mobilenetv2_w{width}_s{size}_{threshold}kb.json",
            "--output_root", "out", "--pretrained", "ck.pt"]
    result = launcher(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert len(lines) == 1 and f"--pretrained {tmp_path}/ck.pt" in lines[0]
    assert f"--tensor_analysis_json {tmp_path}/analysis/mobilenetv2_w0.35_s32_512kb.json" in lines[0]
    assert "# skip mbv2_w0.35_mixed_32px_lam1" in result.stdout
    assert len(commands(launcher(args + ["--force"], cwd=tmp_path).stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["--sizes", "32 144"], "analysis file not found: {tmp}/analysis/mobilenetv2_w0.35_s144_512kb.json"),
    (["--pretrained", "{tmp}/nothing.pt"], "--pretrained: checkpoint not found"),
    (["--jobs", "0"], "--jobs: expected a positive integer"),
    (["--modes", "mixed float"], "--modes: expected mixed and/or int_only, got 'float'"),
    (["--lambdas", "0 big"], "--lambdas: expected non-negative numbers, got 'big'"),
    (["--unknown"], "unknown option '--unknown'"),
])
def test_bad_input_stops_before_anything_runs(launcher, tmp_path, args, message):
    pattern = analysis_files(tmp_path / "analysis", sizes=(32,))
    base = ["--dry_run", "--width_mult", "0.35", "--sizes", "32", "--analysis_pattern", pattern,
            "--output_root", str(tmp_path / "out")]
    result = launcher(base + [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr
    assert commands(result.stdout) == []


def test_default_analysis_name_and_help(launcher, tmp_path):
    result = launcher(["--dry_run", "--sizes", "112", "--analysis_pattern",
                       str(tmp_path / "mobilenetv2_w{width}_s{size}_{threshold}kb.json")])
    assert result.returncode == 2
    assert f"{tmp_path}/mobilenetv2_w1.0_s112_512kb.json" in result.stderr
    # widths are spelled as tensor_memory_filter.py spells them in its file names (Python's str(float))
    for typed, spelled in (("1", "1.0"), ("0.350", "0.35"), (".5", "0.5")):
        result = launcher(["--dry_run", "--sizes", "32", "--width_mult", typed, "--analysis_pattern",
                           str(tmp_path / "mobilenetv2_w{width}_s{size}_{threshold}kb.json")])
        assert f"mobilenetv2_w{spelled}_s32_512kb.json" in result.stderr, typed
    with open(LAUNCHER) as f:
        assert "'../tensor_analysis_result/mobilenetv2_w{width}_s{size}_{threshold}kb.json'" in f.read()
    help_text = launcher(["--help"]).stdout
    for flag in ("--jobs", "--dry_run", "--pretrained", "--dataset", "--epochs", "--output_root", "--extra",
                 "--width_mult", "--analysis_pattern", "--lambdas", "--sizes", "--modes", "--force", "PYTHON"):
        assert flag in help_text, flag


FAKE_SEARCH = textwrap.dedent("""\
    # stands in for dnas_search_cifar10_mbv2.py: records when it ran, writes a summary.json
    import argparse, json, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--tensor_analysis_json"); p.add_argument("--input_size", type=int)
    p.add_argument("--int_only", action="store_true"); p.add_argument("--hardware_weight", type=float)
    p.add_argument("--output_dir"); p.add_argument("--sleep", type=float, default=0.4)
    a, _ = p.parse_known_args()
    with open(os.environ["FAKE_TRACE"], "a") as f:
        f.write(f"start {time.time()} {os.getpid()}\\n")
    time.sleep(a.sleep)
    print("searching", a.hardware_weight, flush=True)
    if a.hardware_weight != 0.5:  # λ = 0.5 stands for a search that fails
        os.makedirs(a.output_dir, exist_ok=True)
        with open(os.path.join(a.output_dir, "summary.json"), "w") as f:
            json.dump({"args": {"input_size": a.input_size, "hardware_weight": a.hardware_weight,
                                "int_only": a.int_only, "dataset": "digits"},
                       "accuracy": {"test": 90 + a.hardware_weight}}, f)
    with open(os.environ["FAKE_TRACE"], "a") as f:
        f.write(f"end {time.time()} {os.getpid()}\\n")
    sys.exit(3 if a.hardware_weight == 0.5 else 0)
""")


def test_real_batch_caps_concurrency_reports_failures_and_prints_the_table(launcher, tmp_path):
    pattern = analysis_files(tmp_path / "analysis", sizes=(32,))
    fake = tmp_path / "fake_search.py"
    fake.write_text(FAKE_SEARCH)
    trace = tmp_path / "trace.txt"
    out = tmp_path / "out"
    result = launcher(["--jobs", "2", "--width_mult", "0.35", "--sizes", "32", "--lambdas", "0 0.5 1",
                       "--analysis_pattern", pattern, "--output_root", str(out), "--dataset", "digits"],
                      env={"PYTHON": sys.executable, "SEARCH_SCRIPT": str(fake), "FAKE_TRACE": str(trace)},
                      timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # the λ = 0.5 searches failed
    assert result.stdout.count("started ") == 6
    assert "FAILED  digits_mbv2_w0.35_mixed_32px_lam0.5 (exit 3)" in result.stderr
    assert "FAILED  digits_mbv2_w0.35_int_only_32px_lam0.5 (exit 3)" in result.stderr
    assert "6 searches run, 2 failed, 0 skipped" in result.stdout
    logs = sorted(os.listdir(out / "logs"))
    assert len(logs) == 6 and "searching 1.0" in (out / "logs" / "digits_mbv2_w0.35_int_only_32px_lam1.log").read_text()
    # the final table lists the 4 searches that wrote a summary
    table = result.stdout[result.stdout.index("Runs under"):]
    assert sum(f"digits_mbv2_w0.35_{m}_32px_lam{lam}" in table
               for m in ("mixed", "int_only") for lam in ("0", "1")) == 4
    assert "lam0.5" not in table
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    # never more than 2 at once
    events = sorted((float(t), kind) for kind, t, _ in (line.split() for line in trace.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_interrupting_the_launcher_stops_its_searches(spawn_process, tmp_path):
    pattern = analysis_files(tmp_path / "analysis", sizes=(32,))
    fake = tmp_path / "fake_search.py"
    fake.write_text(FAKE_SEARCH)
    trace = tmp_path / "trace.txt"
    process = spawn_process(
        ["bash", LAUNCHER, "--jobs", "2", "--sizes", "32", "--lambdas", "0", "--width_mult", "0.35",
         "--analysis_pattern", pattern, "--output_root", str(tmp_path / "out"), "--extra", "--sleep 60",
         "--dataset", "digits"],
        env={"PYTHON": sys.executable, "SEARCH_SCRIPT": str(fake), "FAKE_TRACE": str(trace)},
        pythonpath="PYTHONPATH" in os.environ)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and (not trace.exists() or trace.read_text().count("start") < 2):
            time.sleep(0.1)
        pids = [int(line.split()[2]) for line in trace.read_text().splitlines()]
        assert len(pids) == 2
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "interrupted: stopping 2 running search(es)" in stderr
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        alive = [pid for pid in pids if is_running(pid)]
        time.sleep(0.1)
    assert alive == []


def is_running(pid):
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
