"""The λ-sweep table and plots (Search_CIFAR10/dnas/utils/sweep.py, plot_sweep.py): each network is
predicted on every profile with the table the search itself builds; hardware-blind networks appear on
every profile's plot, a network searched for one profile only on its own."""
import json
import os

import pytest

from Search_CIFAR10.reporting.sweep import write_sweep
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut, lut_latency_ms
from tensor_analysis.profiles import load_profile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = {"type": "mobilenetv2", "num_classes": 10, "width_mult": 0.35, "input_size": 32}
PROFILES = ["stm32h747", "artifact"]


@pytest.fixture(scope="module")
def analysis():
    return analyze_network(MODEL)


def write_run(folder, analysis, *, test, mapping, profile, hardware_weight, uniform=None, target=None):
    os.makedirs(folder)
    summary = {"schema": "adaptqnet/summary/1", "stage": 1, "model": MODEL,
               "args": {"dataset": "digits", "hardware_weight": hardware_weight, "latency_target_ms": target},
               "accuracy": {"fp32_test": 98.61, "test": test},
               "hardware": {"profile": profile, "latency_ms": 1.0, "latency_target_ms": target,
                            "memory_budget_kb": None}}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(folder, "mapping.json"), "w") as f:
        json.dump({"schema": "adaptqnet/mapping/1", "model": MODEL, "layers": mapping}, f)
    allowed = {n: ([uniform] if uniform else ["fp32", "int8", "int4"]) for n in analysis.layer_names}
    with open(os.path.join(folder, "alphas.json"), "w") as f:
        json.dump({"layers": analysis.layer_names, "precisions": allowed, "history": []}, f)
    return folder


@pytest.fixture
def sweep_runs(tmp_path, analysis):
    names = analysis.layer_names
    mixed = {n: ("int4" if i % 3 == 0 else "int8") for i, n in enumerate(names)}
    root = str(tmp_path / "runs")
    return {
        "lam0": write_run(os.path.join(root, "lam0"), analysis, test=97.69, mapping={n: "fp32" if i == 0 else "int8"
                          for i, n in enumerate(names)}, profile="stm32h747", hardware_weight=0.0),
        "h747": write_run(os.path.join(root, "h747_lam1"), analysis, test=98.15, mapping={n: "int8" for n in names},
                          profile="stm32h747", hardware_weight=1.0),
        "artifact": write_run(os.path.join(root, "artifact_lam1"), analysis, test=96.3, mapping=mixed,
                              profile="artifact", hardware_weight=1.0),
        "int4": write_run(os.path.join(root, "uniform_int4"), analysis, test=95.37, mapping={n: "int4" for n in names},
                          profile="stm32h747", hardware_weight=0.0, uniform="int4"),
    }, root


def test_every_network_is_predicted_on_every_profile(sweep_runs, analysis, tmp_path):
    runs, root = sweep_runs
    out = str(tmp_path / "sweep")
    result = write_sweep([root], PROFILES, out)
    with open(os.path.join(out, "sweep.json")) as f:
        data = json.load(f)
    by_label = {(n["label"], n["searched_on"]): n for n in data["networks"]}
    assert set(data["profiles"]) == set(PROFILES)
    for profile in PROFILES:
        lut = build_lut(analysis, load_profile(profile))
        with open(os.path.join(runs["lam0"], "mapping.json")) as f:
            lam0_mapping = json.load(f)["layers"]
        assert by_label[("λ=0", None)]["latency_ms"][profile] == pytest.approx(lut_latency_ms(lut, lam0_mapping))
        assert by_label[("all-fp32 (pretrained)", None)]["latency_ms"][profile] == pytest.approx(
            lut_latency_ms(lut, {n: "fp32" for n in analysis.layer_names}))
        assert os.path.getsize(result["plots"][profile]) > 1000
    assert by_label[("all-fp32 (pretrained)", None)]["test_acc"] == 98.61
    assert by_label[("all-int4", None)]["kind"] == "uniform"
    # the STM32H747's INT8 is faster than its INT4; the artifact table says the opposite
    h747, art = by_label[("λ=1", "stm32h747")]["latency_ms"], by_label[("all-int4", None)]["latency_ms"]
    assert h747["stm32h747"] < art["stm32h747"] and h747["artifact"] > art["artifact"]


def test_a_network_searched_for_another_profile_stays_off_its_plot(sweep_runs, tmp_path):
    from Search_CIFAR10.reporting.sweep import plot_points
    _, root = sweep_runs
    result = write_sweep([root], PROFILES, str(tmp_path / "sweep"))
    nets = result["networks"]
    on_h747 = {p["label"] for p in plot_points(nets, "stm32h747")}
    on_art = {p["label"] for p in plot_points(nets, "artifact")}
    assert {"λ=0", "all-int4", "all-fp32 (pretrained)"} <= on_h747 & on_art
    assert [p for p in plot_points(nets, "artifact") if p["label"] == "λ=1"] == [
        p for p in plot_points([n for n in nets if n.searched_on == "artifact"], "artifact")]
    artifact_row = next(line for line in result["table"].splitlines() if "| artifact |" in line)
    assert artifact_row.count("(") == 1   # its stm32h747 latency is shown, in parentheses


def test_cli_writes_files_and_rejects_a_broken_mapping(run_python, sweep_runs, tmp_path):
    runs, root = sweep_runs
    out = str(tmp_path / "cli")
    script = os.path.join(REPO, "Search_CIFAR10", "dnas", "plot_sweep.py")
    done = run_python([script, "--runs", root, "--hardware", *PROFILES, "--output_dir", out], timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["sweep.json", "sweep.md", "sweep_artifact.png", "sweep_stm32h747.png"]
    with open(os.path.join(runs["h747"], "mapping.json")) as f:
        doc = json.load(f)
    doc["layers"].pop("classifier.1")
    with open(os.path.join(runs["h747"], "mapping.json"), "w") as f:
        json.dump(doc, f)
    before = open(os.path.join(out, "sweep.md")).read()
    done = run_python([script, "--runs", root, "--output_dir", out], timeout=300)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "classifier.1" in lines[0] and "h747_lam1" in lines[0], done.stderr
    assert open(os.path.join(out, "sweep.md")).read() == before
