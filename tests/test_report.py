"""The report (Search_CIFAR10/report.py, make_report.py) on small hand-made run directories: the
numbers in its tables, the embedded figures, valid self-contained HTML, and notes instead of crashes
when pieces are missing."""
import base64
import json
import os
import re
import struct
import zlib
from html.parser import HTMLParser

import pytest

from Search_CIFAR10.reporting.report import build_report, memory_filter_effect

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LAYERS = [("features.0.0", "conv"), ("features.1.conv.0.0", "dwconv"), ("classifier.1", "linear")]
MODEL = {"type": "mobilenetv2", "num_classes": 10, "width_mult": 0.35, "input_size": 32}


def tiny_png(rgb=(0, 114, 178)) -> bytes:
    """A valid 1x1 PNG (stands in for a run's plots)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))


def write_analysis(path):
    kb = 1024
    live = {"features.0.0": {"fp32": 76, "int8": 19}, "features.1.conv.0.0": {"fp32": 160, "int8": 40},
            "classifier.1": {"fp32": 5, "int8": 1.3}}
    layers = []
    for name, op in LAYERS:
        allowed = ["fp32", "fp16", "int8", "int4", "int2"] if live[name]["fp32"] <= 128 else ["fp16", "int8", "int4", "int2"]
        layers.append({"name": name, "op": op, "allowed_precisions": allowed,
                       "bytes": {p: {"live": v * kb} for p, v in live[name].items()}})
    doc = {"schema": "adaptqnet/analysis/1", "model": MODEL, "memory_threshold_kb": 128.0,
           "precisions": ["fp32", "fp16", "int8", "int4", "int2"], "layers": layers,
           "totals": {"peak_ram_bytes": {"fp32": 416 * kb, "int8": 104 * kb}}}
    path.write_text(json.dumps(doc))
    return str(path)


def write_run(folder, *, test, latency, mapping, stage=1, hardware_weight=0.5, target=None, analysis=None,
              uniform=None, pngs=(), extra=None, budget=128.0):
    folder.mkdir(parents=True)
    summary = {
        "schema": "adaptqnet/summary/1", "stage": stage, "model": MODEL,
        "args": {"dataset": "digits", "hardware_weight": hardware_weight, "int_only": uniform is not None,
                 "tensor_analysis_json": analysis, "pretrained": "/somewhere/best.pt", "latency_target_ms": target},
        "accuracy": {"fp32_val": 98.1, "fp32_test": 98.61, "supernet_val": 90.0, "finetuned_val": test + 0.5,
                     "test": test},
        "hardware": {"profile": "stm32h747", "label": "STM32H747 test profile", "latency_ms": latency,
                     "peak_ram_kb": 104.0, "flash_kb": 450.25, "compression": 3.49, "latency_target_ms": target,
                     "memory_budget_kb": budget,
                     "references": {"fp32": {"latency_ms": 85.47, "peak_ram_kb": 416.0, "flash_kb": 1569.9},
                                    "int8": {"latency_ms": 60.16, "peak_ram_kb": 104.0, "flash_kb": 440.7}}},
        "precision_histogram": {},
        "layers": [{"name": n, "op": op, "precision": mapping[n], "live_kb": 10.0 * (i + 1), "latency_ms": 1.5,
                    "macs": 1000} for i, (n, op) in enumerate(LAYERS)],
        "time_s": {"search": 100.0, "finetune": 20.0},
    }
    for p in mapping.values():
        if isinstance(p, str):
            summary["precision_histogram"][p] = summary["precision_histogram"].get(p, 0) + 1
    summary.update(extra or {})
    (folder / "summary.json").write_text(json.dumps(summary))
    allowed = {n: ([uniform] if uniform else ["fp32", "int8", "int4"]) for n, _ in LAYERS}
    history = [{"epoch": e, "temperature": 5.0 / (e + 1),
                "probs": {n: [1.0 / len(allowed[n])] * len(allowed[n]) for n, _ in LAYERS}} for e in range(2)]
    (folder / "alphas.json").write_text(json.dumps({"schema": "adaptqnet/alphas/1", "layers": [n for n, _ in LAYERS],
                                                    "precisions": allowed, "history": history}))
    for name in pngs:
        (folder / name).write_bytes(tiny_png())
    (folder / "split.json").write_text(json.dumps({"dataset": "digits", "test_indices": list(range(200))}))
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    analysis = write_analysis(tmp_path / "analysis.json")
    mixed = {"features.0.0": "fp32", "features.1.conv.0.0": "int8", "classifier.1": "int4"}
    base = tmp_path / "runs"
    out = {
        "stage1": write_run(base / "stage1", test=97.25, latency=62.31, mapping=mixed, target=66.18,
                            analysis=analysis, pngs=("alpha_evolution.png", "training_curves.png"),
                            extra={"budget_repairs": [{"layer": "features.0.0", "from": "fp16", "to": "fp32"}]}),
        "int8": write_run(base / "int8", test=96.75, latency=60.16, mapping={n: "int8" for n, _ in LAYERS},
                          analysis=analysis, uniform="int8"),
        "lam5": write_run(base / "lam5", test=95.5, latency=58.4, mapping=mixed, hardware_weight=5.0,
                          analysis=analysis),
    }
    return tmp_path, out


def stage2_run(tmp_path, stage1_dir):
    split = {"split": "0.5", "units": {"m7": {"precision": "int8", "channels": [0, 8]},
                                       "m4": {"precision": "int8", "channels": [8, 16]}}}
    mapping = {"features.0.0": "fp32", "features.1.conv.0.0": split, "classifier.1": "int4"}
    extra = {"stage1": {"dir": stage1_dir, "latency_ms": 62.31},
             "speedup_vs_stage1": 1.125,
             "dual": {"units": ["m7", "m4"], "opened_layers": ["features.1.conv.0.0", "features.0.0"],
                      "split_layers": {"features.1.conv.0.0": split}}}
    run = write_run(tmp_path / "elsewhere" / "stage2", test=97.0, latency=55.39, mapping=mapping, stage=2,
                    target=None, pngs=("dual_timeline.png",), extra=extra)
    summary = json.loads(open(os.path.join(run, "summary.json")).read())
    summary["hardware"]["units"] = {"m7": {"busy_ms": 50.0, "idle_ms": 5.39, "utilization": 0.9},
                                    "m4": {"busy_ms": 12.0, "idle_ms": 43.39, "utilization": 0.22}}
    open(os.path.join(run, "summary.json"), "w").write(json.dumps(summary))
    return run


class StrictHTML(HTMLParser):
    """Collects images and checks that every non-void element is closed in order."""
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors, self.tables = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "table":
            self.tables += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def parse_html(path):
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>")
    parser = StrictHTML()
    parser.feed(text)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return text, parser


def table_row(markdown, first_cell):
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_report_without_stage2(runs):
    tmp_path, dirs = runs
    out = tmp_path / "out" / "report.md"
    report = build_report([str(tmp_path / "runs")], str(out))
    assert report.main.dir == dirs["stage1"] and report.stage2 is None and set(report.uniform) == {"int8"}

    md = out.read_text()
    fp32 = table_row(md, "FP32 (pretrained)")
    assert fp32[1:8] == ["98.61", "–", "85.47", "416.0 ✗ (+288.0)", "1569.9", "1.00×", "all fp32"]
    int8 = table_row(md, "all-INT8 (QAT)")
    assert int8[1:7] == ["96.75", "-1.86", "60.16", "104.0 ✓", "440.7", f"{1569.9 / 440.7:.2f}×"]
    s1 = table_row(md, "stage 1: mixed precision")
    assert s1[1:8] == ["97.25", "-1.36", "62.31", "104.0 ✓", "450.2", "3.49×", "fp32 1, int8 1, int4 1"]
    assert "Stage 1 meets its latency target: 62.31 ms vs 66.18 ms" in md
    assert "The test split has 200 images: one image is 0.50 percentage points" in md
    assert "1 layer(s) were changed before fine-tuning so that it meets it: `features.0.0` fp16→fp32." in md
    assert "No stage-2 run was given" in md and "no dual-core timeline" in md
    assert "No integer export was given" in md
    # the memory filter removed fp32 from the one layer whose FP32 live bytes exceed 128 KB
    removed = table_row(md, "`features.1.conv.0.0`")
    assert removed[1:4] == ["dwconv", "160.0", "fp32"]
    # the sweep: the λ=5 run and the uniform references are points; the λ=5 run is on the front
    point = table_row(md, "λ=5")
    assert point[3:7] == ["95.50", "58.40", "104.0", "yes"]
    assert table_row(md, "stage 1 (target 66.18 ms)")[3:7] == ["97.25", "62.31", "104.0", "yes"]
    assert table_row(md, "all-int8")[3:5] == ["96.75", "60.16"]

    text, parsed = parse_html(str(out.with_suffix(".html")))
    figures = sorted(os.listdir(tmp_path / "out" / "report_files"))
    assert figures == ["alpha_evolution.png", "pareto.png", "precision_map_stage1.png", "training_curves.png"]
    assert len(parsed.images) == len(figures)
    for img in parsed.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    # self-contained: no reference to any file or URL
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<td class=\"num\">97.25</td>" in text
    for name in figures:
        assert f"](report_files/{name})" in md


def test_report_with_stage2_and_cli(run_python, runs):
    tmp_path, dirs = runs
    s2 = stage2_run(tmp_path, dirs["stage1"])
    out = tmp_path / "rep" / "demo.md"
    # the int8 run is left out: its accuracy is then "not measured", with a note
    proc = run_python([os.path.join(REPO, "Search_CIFAR10", "make_report.py"), "--runs", dirs["lam5"], s2,
                       dirs["stage1"], "--output", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    s2row = table_row(md, "stage 2: mixed precision, dual-core")
    assert s2row[1:4] == ["97.00", "-1.61", "55.39"]
    assert s2row[7] == "fp32 1, int4 1, 1 split over two cores"
    assert table_row(md, "all-INT8")[1] == "not measured" and "All-INT8 accuracy is not measured" in md
    assert "Stage 2 splits 1 of 2 opened layers over m7 + m4: 55.39 ms, 1.125× stage 1." in md
    assert table_row(md, "m4")[1:4] == ["12.00", "43.39", "22%"]
    assert "m7: int8 channels [0, 8], m4: int8 channels [8, 16]" in md
    _, parsed = parse_html(str(out.with_suffix(".html")))
    files = sorted(os.listdir(tmp_path / "rep" / "demo_files"))
    assert "dual_timeline.png" in files and "precision_map_stage2.png" in files
    assert len(parsed.images) == len(files)


def test_report_shows_the_integer_export_of_the_main_run(runs):
    tmp_path, dirs = runs
    export = tmp_path / "runs" / "deploy" / "stage1_c"
    export.mkdir(parents=True)
    (export / "deployment.json").write_text(json.dumps({
        "schema": "adaptqnet/deployment/1", "run_dir": dirs["stage1"], "model": "mobilenetv2",
        "hardware": "stm32h747", "images": 200,
        "agreement": {"images": 216, "top1_agreement": 1.0, "max_abs_logit_difference": 2.5e-6,
                      "reference_accuracy": 0.97, "pytorch_accuracy": 0.97},
        "sizes": [{"what": "Flash: model (weights + constants)", "measured_bytes": 45056, "predicted_bytes": 44032},
                  {"what": "RAM: activation arena", "measured_bytes": 106496, "predicted_bytes": 106496}],
        "ram_limit_bytes": 1048576,
        "targets": {"host": {"passed": True, "bit_exact": 200, "images": 200, "correct": 193},
                    "m7": {"passed": False, "bit_exact": 199, "images": 200, "correct": 193}}}))
    (tmp_path / "runs" / "deploy" / "other").mkdir()
    (tmp_path / "runs" / "deploy" / "other" / "deployment.json").write_text("[1, 2]")
    out = tmp_path / "out" / "report.md"
    build_report([str(tmp_path / "runs")], str(out))
    md = out.read_text()
    row = table_row(md, "`../runs/deploy/stage1_c`")
    assert row[1:] == ["stage 1 (main)", "host: yes (200/200); m7: NO (199/200)", "96.50% (200 images)",
                       "100.00% of 216, largest logit difference 2.5e-06", "44.0 KB vs 43.0 KB (+2.3%)",
                       "104.0 KB vs 104.0 KB (+0.0%)"]
    assert "`../runs/deploy/other/deployment.json` (not a deployment record" in md


def test_report_refuses_unreadable_named_run_and_skips_unreadable_found_one(runs):
    tmp_path, dirs = runs
    bad = tmp_path / "runs" / "broken"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    out = tmp_path / "r.md"
    with pytest.raises(ValueError, match="broken"):
        build_report([str(bad), dirs["stage1"]], str(out))
    assert not out.exists()
    build_report([str(tmp_path / "runs")], str(out))   # found while searching: skipped, listed
    assert "Skipped: `runs/broken/summary.json`" in out.read_text()


def test_memory_filter_effect(runs):
    tmp_path, _ = runs
    effect = memory_filter_effect(str(tmp_path / "analysis.json"))
    assert effect["threshold_kb"] == 128.0
    assert effect["removed_by_precision"] == {"fp32": ["features.1.conv.0.0"]}
    assert effect["uniform_peak_kb"] == {"fp32": 416.0, "int8": 104.0}


# ----------------------------------------------------------------------------------------------------
# A profiled export: measured instructions per layer against the search's table and a kernel cost model
# ----------------------------------------------------------------------------------------------------
PROFILE_LAYERS = [("quantize", "quantize", "int8", 0, 1200), ("features.0.0", "conv", "fp32", 442368, 4_000_000),
                  ("features.1.conv.0.0", "dwconv", "int8", 147456, 1_000_000), ("pool", "pool", "int8", 0, 30_000),
                  ("classifier.1", "linear", "int4", 12800, 40_000)]


def write_profiled_export(tmp_path, dirs, profile=True):
    """A deployment.json naming a profile.json (as export_c.py --profile writes them), and the run's lut.json."""
    lut = {"schema": "adaptqnet/lut/1", "hardware": "stm32h747", "unit": "m7", "clock_mhz": {"m7": 480.0},
           "layers": {"features.0.0": {"fp32": 2.5, "int8": 1.0}, "features.1.conv.0.0": {"fp32": 3.0, "int8": 1.25},
                      "classifier.1": {"fp32": 0.01, "int4": 0.02}},
           "fixed_ms": 0.05, "fixed_ops": {"pool": 0.05}}
    with open(os.path.join(dirs["stage1"], "lut.json"), "w") as f:
        json.dump(lut, f)
    export = tmp_path / "runs" / "deploy" / "stage1_c"
    export.mkdir(parents=True)
    total = sum(r[4] for r in PROFILE_LAYERS)
    doc = {"schema": "adaptqnet/profile/1", "target": "qemu-mps2-an500", "counter": "instructions", "resolution": 40,
           "images": 2, "bit_exact": "2/2", "model": MODEL, "ops": [],
           "layers": [{"layer": n, "kind": k, "precision": p, "parts": 1, "macs": m, "count": c,
                       "count_per_mac": c / m if m else None} for n, k, p, m, c in PROFILE_LAYERS],
           "total": {"count": total + 400, "ops_count": total, "macs": sum(r[3] for r in PROFILE_LAYERS)}}
    if profile:
        (export / "profile.json").write_text(json.dumps(doc))
    (export / "deployment.json").write_text(json.dumps({
        "schema": "adaptqnet/deployment/1", "run_dir": dirs["stage1"], "model": "mobilenetv2", "hardware": "stm32h747",
        "images": 200, "agreement": None, "sizes": [], "ram_limit_bytes": None,
        "targets": {"m7": {"passed": True, "bit_exact": 200, "images": 200, "correct": 193}},
        "profile": {"file": "profile.json", "target": "qemu-mps2-an500", "counter": "instructions", "images": 2,
                    "count": total + 400, "macs": doc["total"]["macs"]} if profile else None}))
    return export


def test_report_compares_measured_instructions_per_layer_with_the_tables(runs):
    from tensor_analysis.graph import analyze_network
    from tensor_analysis.lut import build_lut
    tmp_path, dirs = runs
    write_profiled_export(tmp_path, dirs)
    # a kernel cost model under another name (stands in for tensor_analysis/hardware/adaptq_m7.json)
    kernels = json.load(open(os.path.join(REPO, "tensor_analysis", "hardware", "stm32h747.json")))
    kernels["name"] = "test_kernels"
    (tmp_path / "test_kernels.json").write_text(json.dumps(kernels))
    out = tmp_path / "out" / "report.md"
    build_report([str(tmp_path / "runs")], str(out), kernel_profile=str(tmp_path / "test_kernels.json"),
                 cycles_per_instruction=2.0)
    md = out.read_text().split("### Measured per layer")[1]
    predicted = build_lut(analyze_network(MODEL), str(tmp_path / "test_kernels.json"))
    header = table_row(md, "layer")
    assert header[3:] == ["MACs", "measured instructions", "instructions / MAC", "search's latency (ms, lut.json)",
                          "predicted by test_kernels (ms)",
                          "predicted instructions (at 2 cycles per instruction and 480 MHz)", "measured / predicted"]
    row = table_row(md, "`features.0.0`")
    ms = predicted["layers"]["features.0.0"]["fp32"]
    assert row[1:8] == ["conv", "fp32", "442,368", "4,000,000", f"{4e6 / 442368:.2f}", "2.500", f"{ms:.3f}"]
    assert row[8:] == [f"{ms * 480e3 / 2:,.0f}", f"{4e6 / (ms * 480e3 / 2):.2f}×"]
    assert table_row(md, "`classifier.1`")[6] == "0.020"        # the run's table at the layer's precision
    pool = table_row(md, "`pool`")
    assert pool[6] == "0.050" and pool[7] == f"{predicted['fixed_ops']['pool']:.3f}"
    quantize = table_row(md, "`quantize`")
    assert quantize[6:9] == ["–", "–", "–"]                     # neither table has a row for it
    total = table_row(md, "**total**")
    covered = sum(c for n, _, _, _, c in PROFILE_LAYERS if n != "quantize")
    pred = sum(predicted["layers"][n][p] for n, _, p, _, _ in PROFILE_LAYERS if n in predicted["layers"])
    pred = (pred + predicted["fixed_ops"]["pool"]) * 480e3 / 2
    assert total[4] == f"**{sum(r[4] for r in PROFILE_LAYERS):,}**" and total[9] == f"**{covered / pred:.2f}×**"
    assert "1 row(s) have no prediction (quantize)" in md
    assert "counts guest instructions" in md and "cycles" not in " ".join(table_row(md, "layer")[4:6])
    parse_html(str(out.with_suffix(".html")))
    # without a stated factor: the one the kernel profile declares (adaptq_m7 has one)
    kernels["cycles_per_instruction"] = 0.5
    (tmp_path / "test_kernels.json").write_text(json.dumps(kernels))
    build_report([str(tmp_path / "runs")], str(out), kernel_profile=str(tmp_path / "test_kernels.json"))
    md = out.read_text().split("### Measured per layer")[1]
    assert table_row(md, "layer")[8] == "predicted instructions (at 0.5 cycles per instruction and 480 MHz)"
    assert table_row(md, "`features.0.0`")[8] == f"{ms * 480e3 / 0.5:,.0f}"


def test_report_without_the_kernel_profile_or_the_profile_says_so(runs):
    tmp_path, dirs = runs
    export = write_profiled_export(tmp_path, dirs)
    out = tmp_path / "out" / "report.md"
    build_report([str(tmp_path / "runs")], str(out), kernel_profile="no_such_kernels")
    md = out.read_text().split("### Measured per layer")[1]
    assert "No kernel cost-model profile `no_such_kernels` here" in md
    assert table_row(md, "layer")[-1] == "search's latency (ms, lut.json)"
    assert table_row(md, "`features.0.0`")[4] == "4,000,000"
    (export / "profile.json").unlink()
    build_report([str(tmp_path / "runs")], str(out), kernel_profile="no_such_kernels")
    assert "the profile deployment.json names is not readable" in out.read_text().lower()
    record = json.loads((export / "deployment.json").read_text())
    record["profile"] = None                                    # an export made without --profile
    (export / "deployment.json").write_text(json.dumps(record))
    build_report([str(tmp_path / "runs")], str(out))
    assert "No export here was profiled on the target" in out.read_text()
