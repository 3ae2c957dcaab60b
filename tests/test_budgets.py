"""Budgets no network can meet (Search_CIFAR10/dnas/derive.py, driver.open_run_dir): both search stages
compare --memory_budget_kb and --latency_target_ms with the best the allowed options reach and stop
before any training with one line giving both figures, unless --allow_unmet_budgets, after which the
run, its summary.json and the report all say the budget is missed."""
import json
import random

import pytest

from models import build_from_spec
from models.files import load_checkpoint, read_json
from models.network import mixed_layers
from Search_CIFAR10.dnas.derive import best_figures, budget_figures, budget_text, missed_budgets
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.dnas.dnas_search_cifar10_mbv2 import main as stage1_main
from Search_CIFAR10.dnas_multicore.dnas_cifar10_search_multicore_mbv2 import main as stage2_main
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.graph import as_analysis
from tensor_analysis.lut import load_lut_json


@pytest.fixture(scope="module")
def hw(tiny_runs):
    analysis = load_analysis_json(str(tiny_runs.root / "a.json"))
    spec = load_checkpoint(str(tiny_runs.root / "pre" / "best.pt"))["spec"]
    model = build_from_spec(spec, precisions={e["name"]: e["allowed_precisions"] for e in analysis["layers"]})
    lut = load_lut_json(str(tiny_runs.root / "lut.json"), analysis)
    return HardwareCost.from_lut(model, lut, analysis, as_analysis(analysis)), model


def test_the_best_figures_are_what_no_mapping_beats(hw):
    cost, model = hw
    best = best_figures(cost)
    options = {n: layer.precisions for n, layer in mixed_layers(model)}
    rng = random.Random(0)
    for _ in range(40):
        mapping = {n: rng.choice(p) for n, p in options.items()}
        figures = budget_figures(cost, mapping)
        assert figures["memory_budget_kb"] >= best["memory_budget_kb"] - 1e-9
        assert figures["latency_target_ms"] >= best["latency_target_ms"] - 1e-9
    assert best["memory_budget_kb"] == budget_figures(cost, {n: p[-1] for n, p in options.items()})["memory_budget_kb"]
    assert best["latency_target_ms"] == budget_figures(cost, cost.cheapest_choice())["latency_target_ms"]


def test_missed_budgets_and_their_words():
    figures = {"memory_budget_kb": 26.0, "latency_target_ms": 59.12}
    assert missed_budgets({"memory_budget_kb": 1.0, "latency_target_ms": None}, figures) == [
        ("memory_budget_kb", 1.0, 26.0)]
    assert missed_budgets({"memory_budget_kb": 26.0, "latency_target_ms": 60}, figures) == []
    assert budget_text("latency_target_ms", 1, 59.123, best=True) == \
        "--latency_target_ms 1: the best the allowed precisions reach is 59.12 ms of latency"
    assert budget_text("memory_budget_kb", 1, 26) == "--memory_budget_kb 1: the network's peak RAM is 26.00 KB"


@pytest.mark.parametrize("flag, value, words", [
    ("--memory_budget_kb", "0.1", "KB of peak RAM"), ("--latency_target_ms", "0.01", "ms of latency")])
def test_stage1_stops_before_training_with_the_request_and_the_best_figure(flag, value, words, tiny_runs, hw, tmp_path,
                                                                         run_main):
    best = best_figures(hw[0])[flag[2:]]
    out = tmp_path / "never"
    code, err = run_main(stage1_main, tiny_runs.stage1_argv(flag, value, "--output_dir", out))
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"error: {flag} {value}: the best the allowed precisions reach is {best:.2f} {words}: no "
                      f"network meets it, so nothing was trained; relax it, or pass --allow_unmet_budgets to search "
                      f"for the closest network anyway")
    assert not out.exists()


def test_stage2_stops_before_training_too(tiny_runs, tmp_path, run_main):
    out = tmp_path / "never"
    code, err = run_main(stage2_main, tiny_runs.stage2_argv("--latency_target_ms", "0.01", "--output_dir", out))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --latency_target_ms 0.01: the best the allowed "
                                                             "precisions reach is "), err
    assert not out.exists()


def test_allow_unmet_budgets_searches_and_says_so_at_the_end_in_the_summary_and_the_report(tiny_runs, hw, tmp_path,
                                                                                          run_main):
    from Search_CIFAR10.make_report import main as report_main
    out = tmp_path / "runs" / "unmet"
    code, err = run_main(stage1_main, tiny_runs.stage1_argv("--memory_budget_kb", "0.1", "--allow_unmet_budgets",
                                                            "--output_dir", out))
    assert code == 0, err
    least = best_figures(hw[0])["memory_budget_kb"]
    assert err[0].startswith("warning: --memory_budget_kb 0.1: the best the allowed precisions reach is "
                             f"{least:.2f} KB of peak RAM")
    summary = read_json(str(out / "summary.json"))
    hardware = summary["hardware"]
    assert hardware["meets_memory_budget"] is False and hardware["allow_unmet_budgets"] is True
    assert hardware["unmet_budgets"] == [f"--memory_budget_kb 0.1: the network's peak RAM is "
                                         f"{hardware['peak_ram_kb']:.2f} KB"]
    assert err[-1] == f"warning: THE RESULT MISSES ITS BUDGET: {hardware['unmet_budgets'][0]} (summary.json: " \
                      f"hardware.unmet_budgets)"
    code, _ = run_main(report_main, ["--runs", out, "--output", tmp_path / "report.md"])
    text = (tmp_path / "report.md").read_text()
    assert code == 0 and "does not meet its budget" in text and "so that it meets it" not in text
    assert hardware["unmet_budgets"][0] in text and "--allow_unmet_budgets" in text


def test_a_met_budget_is_recorded_as_met(tiny_runs):
    summary = json.loads((tiny_runs.root / "runs" / "s1" / "summary.json").read_text())
    assert summary["hardware"]["unmet_budgets"] == [] and summary["hardware"]["allow_unmet_budgets"] is False
