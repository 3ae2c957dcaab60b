"""Stage 2 (dual-core): split layers, the searchable option mixture, split latency, mapping files, and
the real script end to end on a tiny stage-1 run."""
import argparse
import copy
import importlib.util
import json
import math
import os
import shutil

import pytest
import torch

from models import build_model
from models.dual import (DualOptionConv2d, DualOptionLinear, apply_dual_mapping, build_dual_network, dual_layers,
                         dual_mapping, open_dual_layers, option_parts, to_dual_layer)
from models.mapping import Part, dual_option_key, mapping_document, read_mapping
from models.network import mixed_layers
from Search_CIFAR10.dnas_multicore.stage2 import dual_hardware_cost
from tensor_analysis.analysis_file import analysis_document
from tensor_analysis.dual import dual_analysis_json
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut, lut_latency_ms
from tensor_analysis.prediction import dual_speedup
from tensor_analysis.profiles import load_profile, parse_profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "Search_CIFAR10", "dnas_multicore", "dnas_cifar10_search_multicore_mbv2.py")
SPEC = {"num_classes": 10, "width_mult": 0.1, "input_size": 16}


def tiny(precisions=("int8",), seed=0):
    torch.manual_seed(seed)
    m = build_model("mobilenetv2", precisions=list(precisions), **SPEC)
    for _, layer in mixed_layers(m):  # distinct clips per precision, so a mixed-up clip would show
        layer.act_clip.data = torch.linspace(2.0, 4.0, layer.act_clip.numel())
    return m.eval()


def by_kind(model):
    layers = list(mixed_layers(model))
    pick = {"conv": layers[0]}
    for name, layer in layers:
        pick.setdefault(layer.op_kind, (name, layer))
    return pick  # conv (dense 3x3 stem), dwconv, pwconv, linear


def out_channels(layer):
    return layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features


def layer_input(layer, batch=3):
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, torch.nn.Linear):
        return torch.randn(batch, layer.in_features, generator=g)
    return torch.randn(batch, layer.in_channels, 6, 6, generator=g)


# ----------------------------------------------------------------------------------------------------
# The layers
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["conv", "dwconv", "pwconv", "linear"])
def test_split_equals_unsplit_at_one_precision_and_each_part_is_its_precision(kind):
    model = tiny(("int8", "int4", "fp32"))
    name, layer = by_kind(model)[kind]
    x = layer_input(layer)
    c = out_channels(layer)
    k = c // 3
    with torch.no_grad():
        whole = {}
        for p in ("int8", "int4"):
            layer.set_precision(p)
            whole[p] = layer(x)
        for p in ("int8", "int4"):
            same = to_dual_layer(layer, [f"m7:{p}[0:{k}]+m4:{p}[{k}:{c}]"], name=name)
            assert torch.allclose(same(x), whole[p], atol=1e-6)
        mixed = to_dual_layer(layer, [f"m7:int8[0:{k}]+m4:int4[{k}:{c}]"], name=name)
        y = mixed(x)
    assert mixed.weight is layer.weight  # the shared weight carries over, not a copy
    assert torch.allclose(y[:, :k], whole["int8"][:, :k], atol=1e-6)
    assert torch.allclose(y[:, k:], whole["int4"][:, k:], atol=1e-6)
    assert not torch.allclose(whole["int8"][:, k:], whole["int4"][:, k:])  # the test can tell them apart


@pytest.mark.parametrize("kind", ["dwconv", "pwconv", "linear"])
def test_searchable_layer_is_the_exact_mixture_and_one_hot_is_the_fixed_split(kind):
    model = tiny(("int8", "int4", "int2", "fp16"))
    name, layer = by_kind(model)[kind]
    c = out_channels(layer)
    options = ["int8", f"m7:int8[0:{c // 2}]+m4:int4[{c // 2}:{c}]", f"m7:int2[0:{c - 1}]+m4:fp16[{c - 1}:{c}]",
               f"m4:int4[0:{c}]"]
    dual = to_dual_layer(layer, options, name=name)
    fixed = [to_dual_layer(layer, [o], name=name) for o in options]
    x = layer_input(layer)
    dual.alpha.data = torch.tensor([0.3, -1.0, 0.7, 0.1])
    dual.temperature = 0.8
    pi = dual.probs()
    with torch.no_grad():
        brute = sum(pi[i] * f(x) for i, f in enumerate(fixed))
        assert torch.allclose(dual(x), brute, atol=1e-5)
        for i, f in enumerate(fixed):
            dual.alpha.data = torch.full((4,), -1e4)
            dual.alpha.data[i] = 1e4
            assert torch.allclose(dual(x), f(x), atol=1e-6)
            assert dual.derive() == f.derive() == options[i]
    # α gets a gradient through the mixture (the search can move it)
    dual.alpha.data = torch.zeros(4)
    dual(x).square().sum().backward()
    assert dual.alpha.grad is not None and dual.alpha.grad.abs().sum() > 0


def test_grouped_split_must_fall_on_group_boundaries():
    from models.layers import MixedPrecisionConv2d
    grouped = MixedPrecisionConv2d(8, 8, 3, padding=1, groups=2, precisions=["int8", "int4"], name="g")
    with pytest.raises(ValueError, match="group boundaries"):
        to_dual_layer(grouped, ["m7:int8[0:3]+m4:int8[3:8]"])
    split = to_dual_layer(grouped, ["m7:int8[0:4]+m4:int4[4:8]"])
    x = torch.randn(2, 8, 5, 5)
    grouped.set_precision("int4")
    assert torch.allclose(split(x)[:, 4:], grouped(x)[:, 4:], atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Latency of a split layer, by hand
# ----------------------------------------------------------------------------------------------------
def _profile(tmp_path):
    def per(v):
        return {p: v for p in ("fp32", "fp16", "int8", "int4", "int2")}

    def unit(clock, overhead, cpm, cpo):
        return {"core": "test", "clock_mhz": clock, "native": ["int8"], "overhead_cycles": overhead,
                "cycles_per_mac": {op: per(cpm) for op in ("conv", "dwconv", "pwconv", "linear")},
                "cycles_per_output": per(cpo), "cycles_per_im2col": per(0), "simd_lanes": per(1)}
    d = {"schema": "adaptqnet/hardware/1", "name": "handmade", "units": {"a": unit(100, 1000, 2.0, 4.0),
                                                                          "b": unit(50, 500, 3.0, 8.0)},
         "dual": {"units": ["a", "b"], "sync_cycles": 2000, "coherence_cycles_per_byte": 0.5, "contention": 0.1}}
    path = tmp_path / "handmade.json"
    path.write_text(json.dumps(d))
    return parse_profile(d, str(path))


def test_split_latency_is_max_of_parts_plus_overhead_by_hand(tmp_path):
    prof = _profile(tmp_path)
    net = analyze_network({"type": "mobilenetv2", **SPEC})
    op = next(o for o in net.layers if o.op == "pwconv" and o.out_channels % 4 == 0)
    cin, h, w = op.in_shape
    cout, ho, wo = op.out_shape
    macs, outs, k = cout * ho * wo * cin, cout * ho * wo, cout * 3 // 4
    assert op.macs == macs
    key = dual_option_key([Part("a", "int8", 0, k), Part("b", "int4", k, cout)])
    # the block's residual add is fused into this projection: each unit pays its share of the add's
    # cost as an operator of its own (overhead only: the profile has no element-wise cycles)
    assert op.fused == ["add"]
    # unit a: 3/4 of the channels at 2 cycles/MAC and 4 cycles/output, 100 MHz
    t_a = (1000 + macs * 0.75 * 2.0 + outs * 0.75 * 4.0 + 0.75 * 1000) / 100e3
    # unit b: 1/4 at 3 cycles/MAC, 8 cycles/output, 50 MHz
    t_b = (500 + macs * 0.25 * 3.0 + outs * 0.25 * 8.0 + 0.25 * 500) / 50e3
    # hand-over: fixed sync + 0.5 cycle per byte b reads (whole input, int4) and writes (its output, int4)
    moved = math.ceil(cin * h * w / 2) + math.ceil(outs / 4 / 2)
    expected = max(t_a, t_b) * 1.1 + (2000 + 0.5 * moved) / 100e3

    lut = build_lut(net, prof, dual=True, splits=["0.75"])
    assert lut["dual"]["options"][op.name][key]["ms"] == pytest.approx(expected, rel=1e-5)
    # the search's hardware term uses the same figure for that α entry
    model = build_model("mobilenetv2", precisions=["int8"], **SPEC)
    dual_doc = dual_analysis_json(net, prof, 1024, splits=["0.75"])
    open_dual_layers(model, {op.name: ["int8", key]})
    hw = dual_hardware_cost(model, lut, dual_doc, net)
    assert hw.option_labels[op.name] == ["int8", key]
    assert float(hw.latency_ms[op.name][1]) == pytest.approx(expected, rel=1e-5)
    choice = {n: "int8" for n, _ in mixed_layers(model)}
    base = hw.mapping_latency_ms(choice)
    assert hw.mapping_latency_ms({**choice, op.name: key}) - base == pytest.approx(
        expected - lut["layers"][op.name]["int8"], rel=1e-4)
    # and the whole-network figure of the derived mapping says the same
    assert lut_latency_ms(lut, {**choice, op.name: key}) - lut_latency_ms(lut, choice) == pytest.approx(
        expected - lut["layers"][op.name]["int8"], rel=1e-4)


@pytest.mark.parametrize("profile,limit", [("stm32h747", 1.31), ("esp32s3", 1.9)])
def test_best_balanced_split_of_every_layer_stays_within_the_physics(profile, limit):
    net = analyze_network({"type": "mobilenetv2", "num_classes": 10, "width_mult": 0.35, "input_size": 32})
    prof = load_profile(profile)
    lut = build_lut(net, prof, dual=True, precisions=["int8"])
    mapping = {}
    for op in net.layers:  # each layer at its fastest int8 option, split or not
        opts = {"int8": lut["layers"][op.name]["int8"]}
        opts.update({k: v["ms"] for k, v in lut["dual"]["options"][op.name].items()})
        mapping[op.name] = min(opts, key=opts.get)
    s = dual_speedup(net, mapping, prof)
    assert 1.0 < s["speedup"] <= limit
    assert s["best_single_unit"] == prof.primary


# ----------------------------------------------------------------------------------------------------
# Mapping files
# ----------------------------------------------------------------------------------------------------
def test_mapping_round_trip(tmp_path):
    model = tiny(("int8", "int4"))
    names = [n for n, _ in mixed_layers(model)]
    layers = dict(mixed_layers(model))
    pick = {names[1]: 0, names[4]: 2, names[-1]: 3}
    options = {}
    for n in pick:
        c = out_channels(layers[n])
        options[n] = ["int8", f"m7:int8[0:{c // 2}]+m4:int4[{c // 2}:{c}]", f"m7:int4[0:{c - 2}]+m4:int8[{c - 2}:{c}]",
                      f"m4:int8[0:{c}]"]
    open_dual_layers(model, options)
    for n, i in pick.items():
        layers = dict(dual_layers(model))
        layers[n].alpha.data[i] = 5.0
    for n, layer in mixed_layers(model):
        if n not in pick:
            layer.set_precision("int4" if n == names[2] else "int8")
    mapping = dual_mapping(model)
    assert mapping[names[1]] == "int8" and mapping[names[2]] == "int4"
    assert mapping[names[4]]["units"]["m4"] == {"precision": "int8", "channels": [out_channels(dict(
        mixed_layers(model))[names[4]]) - 2, out_channels(dict(mixed_layers(model))[names[4]])]}
    assert list(mapping[names[-1]]["units"]) == ["m4"]
    derived = copy.deepcopy(model)
    apply_dual_mapping(derived, mapping)
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(mapping_document(model.spec, mapping, {"hardware": "stm32h747"})))
    layers_back = read_mapping(json.loads(path.read_text()), str(path), [n for n, _ in mixed_layers(derived)])[1]
    assert layers_back == mapping
    rebuilt = build_dual_network(model.spec, layers_back)
    rebuilt.load_state_dict(derived.state_dict())
    rebuilt.eval()
    derived.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), derived(x))
    assert dual_mapping(rebuilt) == mapping
    assert isinstance(dict(mixed_layers(rebuilt))[names[4]], DualOptionConv2d)
    assert isinstance(dict(mixed_layers(rebuilt))[names[-1]], DualOptionLinear)
    assert not isinstance(dict(mixed_layers(rebuilt))[names[1]], (DualOptionConv2d, DualOptionLinear))
    # the analysis module reads the same entries (its format, not a second one)
    net = analyze_network(model.spec)
    parts = net.check_mapping(layers_back)
    assert parts[names[4]] == option_parts(dict(mixed_layers(rebuilt))[names[4]], layers_back[names[4]])


# ----------------------------------------------------------------------------------------------------
# The real script
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    """A tiny stage-1 run, made in-process with the stage-1 driver (1 search epoch, no fine-tuning)."""
    from Search_CIFAR10.dnas.stage1 import add_stage1_args, run_stage1
    folder = tmp_path_factory.mktemp("stage1")
    analysis = analysis_document(analyze_network({"type": "mobilenetv2", **SPEC}), memory_threshold_kb=1024)
    (folder / "analysis.json").write_text(json.dumps(analysis))
    parser = argparse.ArgumentParser()
    add_stage1_args(parser)
    args = parser.parse_args(["--tensor_analysis_json", str(folder / "analysis.json"), "--hardware", "stm32h747",
                              "--dataset", "digits",
                              "--width_mult", "0.1", "--input_size", "16", "--epochs", "1", "--warmup_epochs", "0",
                              "--finetune_epochs", "0", "--batch_size", "16", "--limit_train", "32",
                              "--limit_eval", "32", "--output_dir", str(folder / "run"), "--device", "cpu",
                              "--compile", "off"])
    with pytest.warns(UserWarning):  # no --pretrained: trains from scratch
        run_stage1(args)
    return folder / "run"


@pytest.fixture(scope="session")
def run_script(run_python):
    """The stage-2 script from its own folder, as a user runs it."""
    return lambda args, env=None, timeout=240: run_python([SCRIPT, *args], cwd=os.path.dirname(SCRIPT), env=env,
                                                          timeout=timeout)


RUN_FILES = ["args.json", "log.csv", "alphas.json", "mapping.json", "summary.json", "split.json", "lut.json",
             "analysis.json", "supernet.pt", "final.pt", "checkpoint_last.pt", "training_curves.png",
             "alpha_evolution.png", "precision_map.png", "dual_timeline.png"]


def stage2_args(stage1_dir, out):
    return ["--stage1_dir", str(stage1_dir), "--epochs", "2", "--warmup_epochs", "1", "--finetune_epochs", "1",
            "--batch_size", "16", "--topk", "3", "--output_dir", str(out), "--device", "cpu"]


def test_two_epoch_run_writes_every_output(run_script, stage1_dir, tmp_path):
    out = tmp_path / "s2"
    r = run_script(stage2_args(stage1_dir, out))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in RUN_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    stage1 = json.loads((stage1_dir / "summary.json").read_text())
    assert summary["stage"] == 2 and summary["schema"] == stage1["schema"]
    assert set(stage1) <= set(summary)  # stage 1's schema, plus the stage-2 sections
    assert summary["stage1"]["latency_ms"] == pytest.approx(stage1["hardware"]["latency_ms"], rel=1e-6)
    assert summary["speedup_vs_stage1"] == pytest.approx(summary["stage1"]["latency_ms"]
                                                         / summary["hardware"]["latency_ms"])
    assert len(summary["dual"]["opened_layers"]) == 3
    assert set(summary["hardware"]["units"]) == {"m7", "m4"}
    mapping = json.loads((out / "mapping.json").read_text())
    assert mapping["schema"] == "adaptqnet/mapping/1" and len(mapping["layers"]) == 53
    for name, entry in mapping["layers"].items():
        if name not in summary["dual"]["opened_layers"]:
            assert entry == stage1["layers"][[r["name"] for r in stage1["layers"]].index(name)]["precision"]
    alphas = json.loads((out / "alphas.json").read_text())
    assert alphas["stage"] == 2 and alphas["layers"] == summary["dual"]["opened_layers"]
    last = alphas["history"][-1]
    for n in alphas["layers"]:
        assert len(last["option_probs"][n]) == len(alphas["options"][n])
        assert sum(last["probs"][n]) == pytest.approx(1.0, abs=1e-4)
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 + 1
    from Search_CIFAR10.dnas_multicore.stage2 import load_stage2_network
    net = load_stage2_network(str(out / "final.pt"))
    assert dual_mapping(net) == mapping["layers"]

    # SIGKILLed in the middle of the α-searching epoch, then --resume: the same network as uninterrupted
    part = tmp_path / "s2_part"
    env = {"ADAPTQNET_FAULT": "kill@search:1:1"}
    r = run_script(stage2_args(stage1_dir, part), env=env)
    assert r.returncode != 0 and not (part / "final.pt").exists()
    r = run_script(["--resume", "--output_dir", str(part)])
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(str(out / "final.pt"), map_location="cpu", weights_only=False)["model"]
    b = torch.load(str(part / "final.pt"), map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "mapping.json").read_text())["layers"] == mapping["layers"]


def _main():
    spec = importlib.util.spec_from_file_location("stage2_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _error(capsys, argv):
    from tensor_analysis.cli import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_main(), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_bad_inputs_give_one_clear_line(stage1_dir, tmp_path, capsys):
    base = ["--epochs", "1", "--device", "cpu", "--output_dir", str(tmp_path / "out")]
    # a directory missing files
    broken = tmp_path / "broken"
    shutil.copytree(stage1_dir, broken)
    (broken / "final.pt").unlink()
    line = _error(capsys, ["--stage1_dir", str(broken), *base])
    assert "final.pt" in line and str(broken) in line
    # a mapping.json that belongs to another model
    other = tmp_path / "other"
    shutil.copytree(stage1_dir, other)
    doc = json.loads((other / "mapping.json").read_text())
    doc["model"]["width_mult"] = 0.35
    (other / "mapping.json").write_text(json.dumps(doc))
    line = _error(capsys, ["--stage1_dir", str(other), *base])
    assert "mapping.json" in line and "width_mult" in line
    # a dual-core analysis made for another model
    wrong = dual_analysis_json(analyze_network({"type": "mobilenetv2", **SPEC, "input_size": 8}), "stm32h747", 1024,
                               precisions=["int8"], splits=["0.5"])
    (tmp_path / "dual.json").write_text(json.dumps(wrong))
    line = _error(capsys, ["--stage1_dir", str(stage1_dir), "--dual_analysis_json", str(tmp_path / "dual.json"), *base])
    assert "another model" in line and "input_size" in line
    # a profile with one processing unit
    line = _error(capsys, ["--stage1_dir", str(stage1_dir), "--hardware", "stm32f746", *base])
    assert "one processing unit" in line and "stm32h747" in line
    assert not (tmp_path / "out").exists()


def test_one_unit_profile_exits_non_zero_from_the_shell(run_script, stage1_dir, tmp_path):
    r = run_script(["--stage1_dir", str(stage1_dir), "--hardware", "cortex_m4f", "--output_dir", str(tmp_path / "o")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: hardware cortex_m4f has one processing unit")


def test_latency_predictor_reports_dual_speedup(tmp_path, capsys):
    from tensor_analysis import tensor_latency_predictor
    net = analyze_network({"type": "mobilenetv2", **SPEC})
    mapping = {n: "int8" for n in net.layer_names}
    op = net.layer(net.layer_names[3])
    mapping[op.name] = {"units": {"m7": {"precision": "int8", "channels": [0, 36]},
                                  "m4": {"precision": "int8", "channels": [36, op.out_channels]}}}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping_document({"type": "mobilenetv2", **SPEC}, mapping)))
    out = tmp_path / "pred.json"
    tensor_latency_predictor.main(["--precision_mapping_file", str(path), "--hardware", "stm32h747", "--quiet",
                                   "--output_file", str(out)])
    text = capsys.readouterr().out
    pred = json.loads(out.read_text())
    s = pred["dual_speedup"]
    assert "dual-core speed-up" in text and s["best_single_unit"] == "m7"
    assert s["speedup"] == pytest.approx(s["single_unit_ms"]["m7"] / pred["totals"]["latency_ms"])
    assert set(pred["totals"]["units"]) == {"m7", "m4"}
    assert pred["totals"]["units"]["m4"]["busy_ms"] > 0 and pred["totals"]["units"]["m4"]["idle_ms"] > 0


def test_layer_selection_by_latency_entropy_and_names(stage1_dir):
    from Search_CIFAR10.dnas_multicore.stage2 import Stage1Run, rank_layers, select_layers
    run = Stage1Run(str(stage1_dir))
    lut = json.loads((stage1_dir / "lut.json").read_text())
    by_latency = rank_layers(run, lut, "latency")
    ms = [lut["layers"][n][run.mapping[n]] for n in by_latency]
    assert ms == sorted(ms, reverse=True)
    history = json.loads((stage1_dir / "alphas.json").read_text())["history"][-1]["probs"]
    entropy = {n: -sum(p * math.log(p) for p in v if p > 0) for n, v in history.items()}
    by_entropy = rank_layers(run, lut, "entropy")
    assert [entropy[n] for n in by_entropy] == sorted(entropy.values(), reverse=True)

    model = run.build_network()
    net = analyze_network(run.spec)
    dual_doc = dual_analysis_json(net, "stm32h747", 1024, precisions=["int8", "int4"], splits=["0.5"])
    args = argparse.Namespace(dual_precisions=None, layers=None, topk=2, select="entropy", protect=None)
    chosen = select_layers(args, run, model, dual_doc, lut)
    assert set(chosen) == set(by_entropy[:2])
    name = by_entropy[0]
    assert chosen[name][0] == run.mapping[name]  # the stage-1 choice stays an option
    args.layers, args.dual_precisions = f"{by_latency[5]},{by_latency[0]}", "int8"
    chosen = select_layers(args, run, model, dual_doc, lut)
    assert list(chosen) == [n for n in run.mapping if n in (by_latency[5], by_latency[0])]
    assert all("int4" not in o for o in chosen[by_latency[0]])
    args.layers = "features.99.conv"
    with pytest.raises(ValueError, match="--layers: unknown layers features.99.conv"):
        select_layers(args, run, model, dual_doc, lut)


def test_stage2_refuses_a_stage1_mapping_of_another_weight_grid(tmp_path):
    """Stage 2 takes stage 1's grid from final.pt's spec; a mapping.json written for the other grid does not
    belong to those weights."""
    from models.files import save_checkpoint, write_json_atomic
    from models.mapping import mapping_digest
    from Search_CIFAR10.dnas_multicore.stage2 import STAGE1_FILES, Stage1Run
    model = build_model("mobilenetv2", width_mult=0.1, input_size=16, num_classes=10, precisions=["int8"],
                        weight_grid="symmetric")
    mapping = {n: "int8" for n, _ in mixed_layers(model)}
    save_checkpoint({"spec": model.spec, "model": model.state_dict(), "mapping_sha256": mapping_digest(mapping)},
                    str(tmp_path / "final.pt"))
    save_checkpoint({"spec": model.spec, "model": model.state_dict()}, str(tmp_path / "supernet.pt"))
    dorefa_spec = {k: v for k, v in model.spec.items() if k != "weight_grid"}
    write_json_atomic(mapping_document(dorefa_spec, mapping), str(tmp_path / "mapping.json"))
    for name in STAGE1_FILES:
        if not (tmp_path / name).exists():
            write_json_atomic({"stage": 1} if name == "summary.json" else {}, str(tmp_path / name))
    with pytest.raises(ValueError, match="weight grid 'dorefa', this network uses 'symmetric'"):
        Stage1Run(str(tmp_path))
    write_json_atomic(mapping_document(model.spec, mapping), str(tmp_path / "mapping.json"))
    assert Stage1Run(str(tmp_path)).spec["weight_grid"] == "symmetric"
