"""benchmarks/lut_round_trip.py: its commands are accepted by the tools it runs (--dry_run), and the
comparison of two searches on a predicted and a measured table adds up (no QEMU, no training)."""
import argparse
import json
import os

import pytest

from benchmarks import lut_round_trip as rt

LAYERS = {"a": {"fp32": 2.0, "int8": 1.0}, "b": {"fp32": 4.0, "int8": 3.0}}


def write_run(folder, mapping, lut, target=None):
    folder.mkdir(parents=True)
    files = {"args.json": {"latency_target_ms": target, "hardware": "stm32h747", "dataset": "digits", "epochs": 3,
                           "warmup_epochs": 1, "finetune_epochs": 2, "memory_budget_kb": 128.0,
                           "hardware_weight": 0.5, "seed": 0, "pretrained": "/x/best.pt"},
             "summary.json": {"schema": "adaptqnet/summary/1", "model": {"type": "mobilenetv2", "width_mult": 0.35,
                                                                         "input_size": 32},
                              "accuracy": {"test": 95.0}},
             "mapping.json": {"schema": "adaptqnet/mapping/1", "model": {}, "layers": mapping, "hardware": "stm32h747"},
             "lut.json": lut,
             "analysis.json": {"layers": [{"name": "a", "allowed_precisions": ["fp32", "int8"]},
                                          {"name": "b", "allowed_precisions": ["int8", "int4"]}]}}
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc))
    return rt.read_run(str(folder))


def test_comparison_prices_both_networks_on_both_tables(tmp_path):
    predicted = {"schema": "adaptqnet/lut/1", "layers": LAYERS, "fixed_ms": 0.5}
    measured = {"schema": "adaptqnet/lut/1", "fixed_ms": 1.0,
                "layers": {"a": {"fp32": 10.0, "int8": 20.0}, "b": {"fp32": 30.0, "int8": 5.0}},
                "measured": {"counter": "instructions", "cycles_per_instruction": 1.0, "clock_mhz": 480.0,
                             "entries": {"measured": 4, "from_base": 0}}}
    first = write_run(tmp_path / "p", {"a": "int8", "b": "int8"}, predicted, target=5.0)
    second = write_run(tmp_path / "m", {"a": "fp32", "b": "int8"}, measured, target=28.6)
    c = rt.comparison(first, second, measured)
    assert c["all_int8_ms"] == {"predicted": pytest.approx(4.5), "measured": pytest.approx(26.0)}
    assert c["networks"]["searched_on_predicted"]["latency_ms"] == {"predicted": pytest.approx(4.5),
                                                                   "measured": pytest.approx(26.0)}
    assert c["networks"]["searched_on_measured"]["latency_ms"] == {"predicted": pytest.approx(5.5),
                                                                  "measured": pytest.approx(16.0)}
    assert c["networks"]["searched_on_measured"]["histogram"] == {"fp32": 1, "int8": 1}
    assert c["layers_that_differ"] == ["a"]
    assert rt.search_precisions(first["files"]["analysis"]) == ["fp32", "int8", "int4"]
    assert "1 layer(s) chose differently" in rt.summary_lines(c)[-1]


def test_dry_run_commands_are_accepted_by_their_tools(tmp_path, capsys, monkeypatch):
    predicted = {"schema": "adaptqnet/lut/1", "layers": LAYERS, "fixed_ms": 0.5}
    write_run(tmp_path / "run", {"a": "int8", "b": "int8"}, predicted, target=5.0)
    assert rt.main(["--run_dir", str(tmp_path / "run"), "--work_dir", str(tmp_path / "w"), "--dry_run"]) == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ python ")]
    assert [line.split()[1] for line in lines] == [rt.M7_KERNELS, rt.PROFILE_TO_LUT, rt.STAGE1]
    assert not os.path.exists(tmp_path / "w")

    def fail(self, message):
        raise AssertionError(f"{self.prog}: {message}")
    monkeypatch.setattr(argparse.ArgumentParser, "error", fail)
    import shlex
    from benchmarks.m7_kernels import build_parser as kernels_parser
    from Search_CIFAR10.dnas.stage1 import add_stage1_args
    from tensor_analysis.profile_to_lut import build_parser as lut_parser
    stage1 = argparse.ArgumentParser()
    add_stage1_args(stage1)
    for line, parser in zip(lines, (kernels_parser(), lut_parser(), stage1)):
        argv = [a if a != "<ratio x all-INT8 on the measured table>" else "5.5" for a in shlex.split(line)[2:]]
        args = parser.parse_args(argv)
    assert args.latency_lut.endswith("measured_lut.json") and args.epochs == 3 and args.hardware_weight == 0.5
