"""The demo pipeline (Search_CIFAR10/demo.py): its commands are accepted by the tools they call (so
the demo stays a true tutorial as flags change), and the runner orders, reuses and stops steps as
documented. The demo itself is timed by hand (README.md), not here."""
import argparse
import json
import os
import sys

import pytest

from Search_CIFAR10 import demo
from Search_CIFAR10.demo import DemoConfig, Runner, Step, plan
from tensor_analysis.analysis_file import totals
from tensor_analysis.graph import analyze_network


def parser_for(script: str) -> argparse.ArgumentParser:
    if script == demo.PRETRAIN:
        from Search_CIFAR10.pretrain.trainer import build_parser
        return build_parser()
    if script == demo.MEMORY_FILTER:
        from tensor_analysis.tensor_memory_filter import build_parser
        return build_parser()
    if script == demo.DUAL_FILTER:
        from tensor_analysis.tensor_memory_filter_dualcore import build_parser
        return build_parser()
    if script == demo.LATENCY:
        from tensor_analysis.tensor_latency_predictor import build_parser
        return build_parser()
    if script == demo.SUMMARIZE:
        from Search_CIFAR10.dnas.summarize_runs import build_parser
        return build_parser()
    if script == demo.REPORT:
        from Search_CIFAR10.make_report import build_parser
        return build_parser()
    if script == demo.EXPORT_C:
        from deploy.export_c import build_parser
        return build_parser()
    parser = argparse.ArgumentParser()
    if script == demo.STAGE1:
        from Search_CIFAR10.dnas.stage1 import add_stage1_args
        add_stage1_args(parser)
    elif script == demo.STAGE2:
        from Search_CIFAR10.dnas_multicore.stage2 import add_stage2_args
        add_stage2_args(parser)
    else:
        raise AssertionError(f"the demo runs {script}, which this test does not know")
    return parser


def test_every_demo_command_is_accepted_by_its_tool(tmp_path, monkeypatch):
    cfg = DemoConfig(output_dir=str(tmp_path / "demo"))
    os.makedirs(os.path.dirname(cfg.lut_file))
    # the stage-1 target is read from the latency table when the step starts
    with open(cfg.lut_file, "w") as f:
        json.dump({"schema": "adaptqnet/lut/1", "fixed_ms": 0.5, "layers": {"a": {"int8": 2.0}, "b": {"int8": 3.5}}}, f)
    assert demo.all_int8_latency_ms(cfg.lut_file) == pytest.approx(6.0)
    steps = plan(cfg)
    names = [s.name for s in steps]
    assert names[:4] == ["pretrain", "filter", "dual", "lut"] and names[-2:] == ["summary", "report"]
    assert {"stage1", "stage2", "int8", "export"} <= set(names) and sum(n.startswith("sweep_") for n in names) >= 3
    export = next(s for s in steps if s.name == "export")
    assert "stage1" in export.needs and "export" in next(s for s in steps if s.name == "report").needs

    def fail(self, message):
        raise AssertionError(f"{self.prog}: {message}")
    monkeypatch.setattr(argparse.ArgumentParser, "error", fail)
    for step in steps:
        for build in (step.argv, step.resume_argv):
            if build is None:
                continue
            argv = build()
            args = parser_for(argv[0]).parse_args(argv[1:])
            if step.name == "stage1" and build is step.argv:
                assert args.latency_target_ms == pytest.approx(round(cfg.latency_slack * 6.0, 3))
                assert args.memory_budget_kb == cfg.memory_budget_kb
            if step.name == "int8" and build is step.argv:
                assert args.int_only and args.protect == ["*=int8"]
            if step.name == "export":
                assert args.run_dir == cfg.path("search", "stage1") and "host" in args.run
                # with the ARM toolchain the export also profiles on QEMU (profile.json, named in deployment.json)
                assert args.profile == demo.m7_toolchain_installed() == ("m7" in args.run)
    # the budget sits between the all-INT8 and the all-FP32 peak of the demo's network, so the filter
    # removes options without leaving a layer none
    peaks = totals(analyze_network({"type": cfg.model, "width_mult": cfg.width_mult, "input_size": cfg.input_size,
                                    "num_classes": 10}), ["int8", "fp32"])["peak_ram_bytes"]
    assert peaks["int8"] < cfg.memory_budget_kb * 1024 < peaks["fp32"]


def test_demo_says_where_the_profile_is_or_that_it_was_skipped(tmp_path, capsys, monkeypatch):
    cfg = DemoConfig(output_dir=str(tmp_path / "demo"))
    folder = tmp_path / "demo" / "deploy" / "stage1_c"
    folder.mkdir(parents=True)
    record = {"schema": "adaptqnet/deployment/1", "profile": {"file": "profile.json", "target": "qemu-mps2-an500",
                                                              "counter": "instructions", "count": 95463120}}
    (folder / "deployment.json").write_text(json.dumps(record))
    demo.print_profile_status(cfg)
    assert f"profile: {folder / 'profile.json'} (95,463,120 instructions per image" in capsys.readouterr().out
    record["profile"] = None
    (folder / "deployment.json").write_text(json.dumps(record))
    monkeypatch.setattr(demo, "m7_toolchain_installed", lambda: False)
    demo.print_profile_status(cfg)
    assert "profile skipped: no ARM toolchain" in capsys.readouterr().out


def python_step(name, code, done_file, needs=(), always=False):
    return Step(name, name, lambda: ["-c", code], done_file, needs=needs, always=always)


def test_runner_orders_reuses_and_stops(tmp_path, capsys):
    a, b, c, d = (str(tmp_path / x) for x in "abcd")
    with open(c, "w") as f:
        f.write("earlier")
    write = "open({!r}, 'w').write({!r}); print('made', {!r})"
    steps = [
        python_step("b", f"import os; assert os.path.exists({a!r}); " + write.format(b, "b", "b"), b, needs=("a",)),
        python_step("a", write.format(a, "a", "a"), a),
        python_step("c", "raise SystemExit('must not run: c is done')", c),
    ]
    runner = Runner(steps, jobs=2, python=sys.executable, out=sys.stdout)
    assert runner.run()
    out = capsys.readouterr().out
    assert runner.done == {"c": "reused", "a": "ran", "b": "ran"}
    assert "[a] made a" in out and out.index("[a] made a") < out.index("==> [b]")
    assert open(c).read() == "earlier"

    failing = [python_step("x", "import sys; print('bad input'); sys.exit(2)", d),
               python_step("y", write.format(b, "y", "y"), b + "y", needs=("x",))]
    runner = Runner(failing, jobs=1, python=sys.executable, out=sys.stdout)
    assert not runner.run()
    out = capsys.readouterr().out
    assert runner.failed == "x" and "y" not in runner.done and "FAILED (exit 2)" in out
    assert not os.path.exists(b + "y")
