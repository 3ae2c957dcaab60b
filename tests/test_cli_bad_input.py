"""Bad input to every command-line tool: a non-zero exit, exactly one readable "error: ..." line on
stderr (warnings aside) naming what was wrong, no traceback, and no output file touched.

Every case runs the real script in a fresh interpreter, as a user would. The interpreters start
together (a few at a time) when the first case asks for its result: each spends most of its time
importing torch, and the catalogue would otherwise take minutes.
"""
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tensor_analysis.analysis_file import analysis_document

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PRETRAIN = "Search_CIFAR10/pretrain/pretrain_cifar10_mobilenetv2.py"
FILTER = "tensor_analysis/tensor_memory_filter.py"
DUAL = "tensor_analysis/tensor_memory_filter_dualcore.py"
LATENCY = "tensor_analysis/tensor_latency_predictor.py"
COMPRESSION = "tensor_analysis/compression_calc.py"
STAGE1 = "Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py"
STAGE2 = "Search_CIFAR10/dnas_multicore/dnas_cifar10_search_multicore_mbv2.py"
SUMMARIZE = "Search_CIFAR10/dnas/summarize_runs.py"
REPORT = "Search_CIFAR10/make_report.py"
SENTINEL = "results from an earlier run\n"
TINY = ["--model_type", "mobilenetv2", "--width_mult", "0.1", "--input_size", "16"]

# (id, script, arguments whose {name} fields name files made by the `inputs` fixture, words the error
#  line must contain, files that must be unchanged (pre-written) or absent afterwards)
CASES = [
    ("pretrain-unknown-model", PRETRAIN, ["--model", "resnet9000", "--dataset", "digits",
                                          "--output_dir", "{out}/pre"],
     ["resnet9000"], ["{out}/pre"]),
    ("pretrain-unknown-dataset", PRETRAIN, ["--dataset", "mnist3d", "--epochs", "1", "--output_dir", "{out}/pre"],
     ["--dataset", "mnist3d"], ["{out}/pre"]),
    ("pretrain-zero-batch", PRETRAIN, ["--batch_size", "0", "--output_dir", "{out}/pre"],
     ["--batch_size", "0"], ["{out}/pre"]),
    ("filter-unknown-precision", FILTER, TINY + ["--precisions", "fp32,int3", "--output_file", "{kept}"],
     ["int3"], ["{kept}"]),
    ("filter-negative-threshold", FILTER, TINY + ["--memory_threshold", "-5", "--output_file", "{kept}"],
     ["--memory_threshold", "-5"], ["{kept}"]),
    ("filter-infeasible", FILTER, TINY + ["--memory_threshold", "0.01", "--quiet", "--output_file", "{kept}"],
     ["fit at no precision", "nothing written"], ["{kept}"]),
    ("dual-unknown-profile", DUAL, TINY + ["--hardware", "stm99", "--output_file", "{kept}"],
     ["stm99"], ["{kept}"]),
    ("dual-malformed-profile", DUAL, TINY + ["--hardware", "{bad_json}", "--output_file", "{kept}"],
     ["bad.json"], ["{kept}"]),
    ("latency-malformed-mapping", LATENCY, TINY + ["--precision_mapping_file", "{bad_json}", "--output_file",
                                                   "{kept}", "--lut", "{kept2}"],
     ["bad.json"], ["{kept}", "{kept2}"]),
    ("latency-zero-clock", LATENCY, TINY + ["--clock_mhz", "0", "--lut", "{kept}"], ["--clock_mhz"], ["{kept}"]),
    ("compression-missing-mapping", COMPRESSION, TINY + ["--precision_mapping_file", "{out}/nope.json",
                                                         "--output_file", "{kept}"],
     ["nope.json"], ["{kept}"]),
    ("compression-unknown-model", COMPRESSION, ["--model_type", "vgg99", "--output_file", "{kept}"],
     ["vgg99"], ["{kept}"]),
    ("stage1-malformed-analysis", STAGE1, ["--tensor_analysis_json", "{bad_json}", "--output_dir", "{out}/s1"],
     ["bad.json"], ["{out}/s1"]),
    ("stage1-mismatched-checkpoint", STAGE1, ["--tensor_analysis_json", "{analysis}", "--pretrained",
                                              "{wide_ckpt}", "--dataset", "digits", "--epochs", "1",
                                              "--output_dir", "{out}/s1"],
     ["width_mult"], ["{out}/s1"]),
    ("stage1-zero-epochs", STAGE1, ["--tensor_analysis_json", "{analysis}", "--epochs", "0",
                                    "--output_dir", "{out}/s1"], ["--epochs", "0"], ["{out}/s1"]),
    ("stage2-incomplete-stage1-dir", STAGE2, ["--stage1_dir", "{empty_dir}", "--output_dir", "{out}/s2"],
     ["empty_run"], ["{out}/s2"]),
    ("summarize-malformed-summary", SUMMARIZE, ["{bad_runs}", "--csv", "{kept}"], ["could be read"], ["{kept}"]),
    ("report-malformed-summary", REPORT, ["--runs", "{bad_runs}/run", "--output", "{kept}"],
     ["summary.json"], ["{kept}", "{out}/kept.html"]),
    ("report-missing-run", REPORT, ["--runs", "{out}/no_such_run", "--output", "{kept}"],
     ["no_such_run"], ["{kept}", "{out}/kept.html"]),
]


def make_inputs(root) -> dict:
    """Files the cases read: malformed JSON, a real analysis.json of a tiny model, a pretraining
    checkpoint of another width, a folder that is not a stage-1 run, a run folder with a broken summary."""
    from tensor_analysis.graph import analyze_network
    (root / "bad.json").write_text('{"layers": [1, 2,')
    spec = {"type": "mobilenetv2", "width_mult": 0.1, "input_size": 16, "num_classes": 10}
    (root / "analysis.json").write_text(json.dumps(analysis_document(analyze_network(spec), 512.0)))
    torch.save({"schema": "adaptqnet/pretrain/1", "spec": {**spec, "width_mult": 0.5}, "model": {}},
               root / "wide.pt")
    (root / "empty_run").mkdir()
    (root / "bad_runs" / "run").mkdir(parents=True)
    (root / "bad_runs" / "run" / "summary.json").write_text("[1, 2")
    return {"bad_json": str(root / "bad.json"), "analysis": str(root / "analysis.json"),
            "wide_ckpt": str(root / "wide.pt"), "empty_dir": str(root / "empty_run"),
            "bad_runs": str(root / "bad_runs")}


def run_case(run_python, case, paths):
    name, script, argv, _, _ = case
    # the kept files are not of the kinds the tools write, so without --overwrite the output check would be
    # what stops every case; with it, the bad input must stop the tool, and the files stay untouched all the same
    replace = ["--overwrite"] if any("{kept" in a for a in argv) else []
    return run_python([os.path.join(REPO, script)] + [a.format(**paths) for a in argv] + replace, cwd=paths["out"],
                      env={"PYTHONWARNINGS": "ignore"}, timeout=120)


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_python):
    """Every case started at once on a small pool; each test waits for its own."""
    futures = {}
    inputs = make_inputs(tmp_path_factory.mktemp("inputs"))
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
    for case in CASES:
        out = tmp_path_factory.mktemp(case[0])
        # each case writes (or must not write) in a folder of its own
        paths = {**inputs, "out": str(out), "kept": str(out / "kept.md"), "kept2": str(out / "kept2.json")}
        for key in ("kept", "kept2"):
            with open(paths[key], "w") as f:
                f.write(SENTINEL)
        futures[case[0]] = (pool.submit(run_case, run_python, case, paths), paths)
    yield futures
    pool.shutdown(wait=True)


def is_warning(line: str) -> bool:
    # Python warnings (and the source line they quote), "warning: ..." lines of our tools, torch's C++ logs
    return (line.startswith("warning:") or "Warning:" in line or line.startswith("  warnings.warn")
            or re.match(r"^[WI]\d{4} ", line) is not None)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_writes_nothing(case, results):
    name, script, argv, words, untouched = case
    future, paths = results[name]
    proc = future.result()
    assert proc.returncode != 0, f"{name}: exit 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not is_warning(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], f"{name}: {word!r} not in {lines[0]!r}"
    for pattern in untouched:
        path = pattern.format(**paths)
        if os.path.basename(path).startswith("kept"):
            if os.path.exists(path):
                with open(path) as f:
                    assert f.read() == SENTINEL, f"{name}: {path} was changed"
        else:
            assert not os.path.exists(path) or not os.listdir(path), f"{name}: {path} was written"
