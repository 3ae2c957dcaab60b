"""Tensor analysis (issue 4): operator graph, memory model, hardware profiles, latency model, tools."""
import json
import os
import subprocess

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, formats
from models.files import write_json_atomic
from models.layers import MixedPrecisionConv2d, MixedPrecisionLinear
from models.mapping import Part, load_mapping
from models.network import mixed_layers
from models.precisions import PRECISION_ORDER
from tensor_analysis import published
from tensor_analysis.analysis_file import analysis_document, load_analysis_json, totals
from tensor_analysis.cli import model_name
from tensor_analysis.dual import balanced_split, dual_analysis_json
from tensor_analysis.flash import compression, flash_bytes, layer_flash_bytes
from tensor_analysis.graph import NetworkAnalysis, analyze_model, analyze_network
from tensor_analysis.latency import layer_cycles, layer_latency_ms
from tensor_analysis.lut import build_lut, load_lut_json
from tensor_analysis.memory import dual_layer_bytes, layer_bytes, mapping_live_bytes, peak_ram_bytes
from tensor_analysis.prediction import predict_network
from tensor_analysis.profiles import list_profiles, load_profile
from tensor_analysis.validate_profiles import published_vs_predicted

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOOLS = os.path.join(ROOT, "tensor_analysis")
CORTEX_M = [("stm32h747", "m7"), ("stm32h747", "m4"), ("stm32f746", "m7"), ("cortex_m4f", "m4")]


def mbv2(size, width=1.0, classes=10):
    return analyze_network({"type": "mobilenetv2", "input_size": size, "width_mult": width, "num_classes": classes})


def uniform(a, p):
    return {n: p for n in a.layer_names}


@pytest.fixture(scope="module")
def mbv2_224():
    return mbv2(224, classes=1000)


@pytest.fixture(scope="module")
def mbv2_32():
    return mbv2(32)


# ----------------------------------------------------------------------------------------------------
# MACs, parameters, peak RAM of MobileNetV2
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 112, 144, 224])
def test_macs_match_pytorch_flop_counter_and_params_match_model(size):
    a = mbv2(size)
    with torch.device("meta"):
        model = build_model("mobilenetv2", input_size=size, num_classes=10)
    for _, layer in mixed_layers(model):
        layer.set_precision("fp32")
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    assert a.macs == counter.get_total_flops() // 2
    search_only = ("alpha", "act_clip")
    assert a.model_params == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1] not in search_only)
    assert a.layer_names == [n for n, _ in mixed_layers(model)]
    assert a.layer_params == sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                                 for _, m in mixed_layers(model))


def test_mobilenetv2_224_macs_and_published_peak_ram(mbv2_224):
    assert round(mbv2_224.macs / 1e6, 1) == 300.8
    int8 = uniform(mbv2_224, "int8")
    # docs/hardware.md §5.5: 1470 KiB layer-wise (features.2 depthwise: 112·112·96 + 56·56·96 bytes)
    assert peak_ram_bytes(mbv2_224, int8) == 112 * 112 * 96 + 56 * 56 * 96 == 1470 * 1024
    # 1372 KiB with in-place depthwise (features.2 expansion: 112·112·16 + 112·112·96 bytes)
    assert peak_ram_bytes(mbv2_224, int8, inplace_depthwise=True) == 112 * 112 * (16 + 96) == 1372 * 1024
    t = totals(mbv2_224, ["int8"])
    assert t["peak_operator"]["int8"] == "features.2.conv.1.0"


# ----------------------------------------------------------------------------------------------------
# A two-block network computed by hand
# ----------------------------------------------------------------------------------------------------
class TwoBlockNet(nn.Module):
    """stem 3→4 (8×8) · block 1: expand 4→8, depthwise, project 8→4, residual add ·
    block 2: expand 4→8, depthwise stride 2, project 8→6 · pool · linear 6→3."""

    def __init__(self):
        super().__init__()

        def cba(cin, cout, k=1, stride=1, groups=1, act=True):
            layers = [MixedPrecisionConv2d(cin, cout, k, stride, k // 2, groups=groups), nn.BatchNorm2d(cout)]
            return nn.Sequential(*(layers + [nn.ReLU6(inplace=True)] if act else layers))
        self.stem = cba(3, 4, 3)
        self.b1_expand, self.b1_dw, self.b1_project = cba(4, 8), cba(8, 8, 3, groups=8), cba(8, 4, act=False)
        self.b2_expand, self.b2_dw, self.b2_project = cba(4, 8), cba(8, 8, 3, 2, groups=8), cba(8, 6, act=False)
        self.fc = MixedPrecisionLinear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b1_project(self.b1_dw(self.b1_expand(x)))
        x = self.b2_project(self.b2_dw(self.b2_expand(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def two_block():
    return analyze_model(TwoBlockNet(), (3, 8, 8))


def test_two_block_operators_and_live_bytes_by_hand(two_block):
    a = two_block
    # the residual add is fused into b1_project.0: it reads X1 (the stem's output) in its epilogue
    assert [(o.name, o.op) for o in a.operators] == [
        ("stem.0", "conv"), ("b1_expand.0", "pwconv"), ("b1_dw.0", "dwconv"), ("b1_project.0", "pwconv"),
        ("b2_expand.0", "pwconv"), ("b2_dw.0", "dwconv"), ("b2_project.0", "pwconv"),
        ("pool", "pool"), ("fc", "linear")]
    project = a.layer("b1_project.0")
    assert project.fused == ["add"] and project.residual == a.operators[0].output
    assert a.operators[4].inputs == [project.output]
    assert a.macs == 8 * 8 * 4 * 3 * 9 + 2048 + 8 * 8 * 8 * 9 + 2048 + 2048 + 4 * 4 * 8 * 9 + 4 * 4 * 6 * 8 + 18
    # INT8 bytes = elements. X1 = stem output (256) stays alive through block 1 for the residual add.
    layerwise = [192 + 256,            # stem: image + X1
                 256 + 512,            # expand: X1 + E1
                 512 + 512 + 256,      # depthwise: E1 + D1 + X1 kept
                 512 + 256 + 256,      # project with the add: D1 + X1 kept + Y1 (no pre-add tensor)
                 256 + 512,            # expand: Y1 + E2
                 512 + 128,            # depthwise stride 2: E2 + D2 (8×4×4)
                 128 + 96,             # project: D2 + P2 (6×4×4)
                 96 + 6,               # pool
                 6 + 3 * 4]            # linear: the logits are float32
    inplace = list(layerwise)
    inplace[2] = 256 + 512 + 64        # X1 kept + max(E1, D1) + one 8×8 output channel
    inplace[5] = 512 + 16              # max(E2, D2) + one 4×4 output channel
    got = [b for _, b in mapping_live_bytes(a, uniform(a, "int8"))]
    assert got == layerwise
    assert [b for _, b in mapping_live_bytes(a, uniform(a, "int8"), inplace_depthwise=True)] == inplace
    assert peak_ram_bytes(a, uniform(a, "int8")) == 1280
    assert peak_ram_bytes(a, uniform(a, "int8"), inplace_depthwise=True) == 1024
    assert peak_ram_bytes(a, uniform(a, "fp32")) == 4 * 1280
    assert peak_ram_bytes(a, uniform(a, "int4")) == 640
    # the per-layer view used by the filter: kept residual included
    b = layer_bytes(a, a.layer("b1_dw.0"), "fp16")
    assert (b["input"], b["output"], b["kept"], b["live"], b["live_inplace"]) == (1024, 1024, 512, 2560, 1664)


def test_two_block_mixed_mapping_stores_each_tensor_as_its_consumer_reads_it(two_block):
    a = two_block
    m = uniform(a, "int8")
    m["b1_expand.0"] = "fp32"     # X1 feeds this layer (fp32) and the fused add: stored fp32, the add reads it
    m["b1_project.0"] = "int4"    # D1 is read by this layer: stored int4
    got = [b for _, b in mapping_live_bytes(a, m)]
    assert got[:4] == [192 + 1024,           # image (int8) + X1 (fp32)
                       1024 + 512,           # X1 + E1 (int8, read by the depthwise)
                       512 + 256 + 1024,     # E1 + D1 (int4: 512 values) + X1 kept
                       256 + 1024 + 256]     # D1 + X1 (the fused add reads the fp32 copy) + Y1 (int8)
    assert peak_ram_bytes(a, m) == 1792
    # Flash, as the C export lays it out: packed weights (an integer layer other than depthwise pads each
    # output channel's row to whole 32-bit words) + descriptors (part 68 B, output 68 B, buffer 20 B) + per
    # output channel 14 B of fixed-point constants (int → int), 33 B with a fused residual (and its 36 B
    # descriptor), 8 B of float scale and offset otherwise (the logits are float32)
    layer = a.layer("b1_expand.0")
    # 8 rows of 4 weights, padded to the 8 codes of a 4-bit word: 32 B
    assert layer_flash_bytes(layer, "int4") == 32 + 156 + 8 * 14 and layer_flash_bytes(layer, "fp32") == 128 + 156 + 8 * 8
    # 3 rows of 6 weights, padded to the 16 codes of a 2-bit word: 12 B
    assert layer_flash_bytes(a.layer("fc"), "int2", output_precision="fp32") == 12 + 156 + 3 * 8
    assert layer_flash_bytes(a.layer("b1_project.0"), "int8") == 32 + 156 + 6 + 36 + 4 * 33  # + the skip's slice
    weights = sum(o.params - o.bias_elements for o in a.layers) + 4 + 6  # stem rows 27 -> 28, fc rows 6 -> 8
    per_channel = sum((8 if o.name == "fc" else 33 if o.residual is not None else 14) * o.out_channels for o in a.layers)
    image = 16 + 24 + 20  # the quantizer, its output, the image's buffer
    assert flash_bytes(a, uniform(a, "int8")) == (weights + per_channel + 136 * len(a.layers) + 20 * len(a.layers)
                                                  + 6 + 36 + image + 12 + 20)  # skip slice and add, pool + buffer


def test_dual_option_bytes_by_hand(two_block):
    a = two_block
    expand = a.layer("b1_expand.0")
    b = dual_layer_bytes(a, expand, [Part("m7", "int8", 0, 6), Part("m4", "int4", 6, 8)])
    # each unit reads all of X1 in its own format (256 + 128), writes its slice (384 + 64 bytes)
    assert (b["input"], b["output"], b["kept"], b["live"]) == (384, 448, 0, 832)
    assert b["units"]["m4"]["input"] == 128 and b["units"]["m4"]["output"] == 64
    dw = a.layer("b1_dw.0")
    b = dual_layer_bytes(a, dw, [Part("m7", "int8", 0, 4), Part("m4", "int8", 4, 8)])
    assert (b["input"], b["output"], b["kept"], b["live"]) == (512, 512, 256, 1280)  # depthwise reads slices


def test_mapping_validation_names_missing_unknown_and_bad_values(two_block):
    a = two_block
    m = uniform(a, "int8")
    del m["b1_dw.0"]
    m["nonexistent.layer"] = "int8"
    with pytest.raises(ValueError) as e:
        peak_ram_bytes(a, m)
    assert "missing layers: b1_dw.0" in str(e.value) and "unknown layers: nonexistent.layer" in str(e.value)
    bad = uniform(a, "int8")
    bad["fc"] = "int3"
    with pytest.raises(ValueError, match="layer fc.*int3"):
        flash_bytes(a, bad)
    bad["fc"] = {"units": {"m7": {"precision": "int8", "channels": [0, 2]}}}  # covers 2 of 3 channels
    with pytest.raises(ValueError, match="cover all 3"):
        flash_bytes(a, bad)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def test_analysis_json_round_trip_and_validation(tmp_path, mbv2_32):
    d = analysis_document(mbv2_32, 512, PRECISION_ORDER)
    assert d["schema"] == formats.ANALYSIS and len(d["layers"]) == 53
    assert all(set(l["bytes"]) == set(PRECISION_ORDER) for l in d["layers"])
    path = str(tmp_path / "a.json")
    write_json_atomic(d, path, compact=True)
    loaded = load_analysis_json(path)
    m = {l["name"]: l["allowed_precisions"][-1] for l in loaded["layers"]}
    assert peak_ram_bytes(loaded, m) == peak_ram_bytes(mbv2_32, m)
    assert NetworkAnalysis.from_json(loaded).macs == mbv2_32.macs
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_analysis_json(str(tmp_path / "bad.json"))
    (tmp_path / "old.json").write_text(json.dumps(dict(d, schema="adaptqnet/analysis/0")))
    with pytest.raises(ValueError, match="old.json: unknown schema"):
        load_analysis_json(str(tmp_path / "old.json"))
    with pytest.raises(ValueError, match="threshold"):
        analysis_document(mbv2_32, -1)


def test_committed_results_match_a_fresh_analysis():
    folder = os.path.join(ROOT, "Search_CIFAR10", "tensor_analysis_result")
    for size in (32, 112, 144):
        d = load_analysis_json(os.path.join(folder, f"mobilenetv2_w1.0_s{size}_512kb.json"))
        fresh = analysis_document(mbv2(size), 512)
        assert [l["allowed_precisions"] for l in d["layers"]] == [l["allowed_precisions"] for l in fresh["layers"]]
        dual = load_analysis_json(os.path.join(folder, f"mobilenetv2_w1.0_s{size}_512kb_dual_stm32h747.json"))
        assert all("allowed_dual_options" in l for l in dual["layers"])
        lut = load_lut_json(os.path.join(folder, f"mobilenetv2_w1.0_s{size}_stm32h747_lut.json"), d)
        assert lut["hardware"] == "stm32h747" and "dual" in lut


# ----------------------------------------------------------------------------------------------------
# Hardware profiles and the latency model
# ----------------------------------------------------------------------------------------------------
def _numeric_leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix


def test_every_profile_number_cites_a_source():
    assert {"stm32h747", "stm32f746", "esp32s3", "cortex_m4f", "gap9_cluster", "artifact"} <= set(list_profiles())
    for name in list_profiles():
        prof = load_profile(name)
        sources = prof.sources
        for leaf in _numeric_leaves({k: v for k, v in prof.raw.items() if k != "sources"}):
            assert any(leaf == s or leaf.startswith(s + ".") for s in sources), f"{name}: {leaf} has no source"


def test_stm32h747_m7_at_400mhz_predicts_the_published_mobilenetv1_latencies():
    rows = published_vs_predicted(published.STM32H747_MOBILENETV1)
    print("\nSTM32H747 M7 @400 MHz, INT8, X-CUBE-AI: network / MMAC / published ms / predicted ms / error")
    for name, mmac, pub, pred, err in rows:
        print(f"  {name:22s} {mmac:7.1f} {pub:9.2f} {pred:9.2f} {100 * err:+6.1f}%")
    for (name, mmac, pub, pred, err), entry in zip(rows, published.STM32H747_MOBILENETV1):
        assert abs(mmac - entry["mmacs"]) < 0.06, name
        assert abs(err) <= 0.25, f"{name}: predicted {pred:.1f} ms vs published {pub} ms"


def test_held_out_mobilenetv2_latencies_within_25_percent():
    for name, _, pub, pred, err in published_vs_predicted(published.STM32H747_MOBILENETV2_HELD_OUT):
        assert abs(err) <= 0.25, f"{name}: predicted {pred:.1f} ms vs published {pub} ms"


@pytest.mark.parametrize("profile,unit", CORTEX_M + [("esp32s3", "core0")])
def test_int8_is_the_fastest_integer_precision_and_fp16_no_faster_than_fp32(profile, unit, mbv2_32, mbv2_224):
    prof = load_profile(profile)
    for a in (mbv2_32, mbv2_224):
        for op in a.layers:
            t = {p: layer_latency_ms(op, p, prof, unit) for p in PRECISION_ORDER}
            assert t["int8"] < t["int4"] < t["int2"], (profile, op.name, t)
            assert t["fp16"] >= t["fp32"], (profile, op.name, t)
            assert t["int8"] < t["fp32"], (profile, op.name, t)


def test_sub_byte_simd_cluster_runs_lower_bits_faster(mbv2_32):
    prof = load_profile("gap9_cluster")
    for op in mbv2_32.layers:
        t = {p: layer_latency_ms(op, p, prof) for p in PRECISION_ORDER}
        assert t["int2"] < t["int4"] < t["int8"] < t["fp16"] < t["fp32"], (op.name, t)


def test_narrow_layers_cost_more_per_mac_and_depthwise_costs_2_5_to_4x_pointwise(mbv2_224):
    a = analyze_network({"type": "mobilenetv2", "input_size": 224, "width_mult": 0.35, "num_classes": 1000})
    for profile, unit in CORTEX_M:
        u = load_profile(profile).unit(unit)
        cpm = lambda op: layer_cycles(op, "int8", u) / op.macs  # noqa: E731
        narrow = a.layer("features.2.conv.0.0")        # 8 → 48 channels
        wide = mbv2_224.layer("features.12.conv.0.0")  # 96 → 576 channels
        assert narrow.in_channels == 8 and wide.in_channels == 96
        assert cpm(narrow) > 1.3 * cpm(wide)
        dw = mbv2_224.layer("features.12.conv.1.0")    # 576 channels 3×3 at 14×14
        assert 2.5 <= cpm(dw) / cpm(wide) <= 4.0, (profile, unit)


def test_artifact_profile_reproduces_the_seed_table():
    prof = load_profile("artifact")
    from tensor_analysis.graph import Operator
    pw = Operator(0, "pw", "pwconv", True, [], 0, (100, 100, 20), (100, 100, 20), 2_000_000)
    dw = Operator(0, "dw", "dwconv", True, [], 0, (100, 100, 20), (100, 100, 20), 2_000_000, kernel=(3, 3), groups=100)
    fc = Operator(0, "fc", "linear", True, [], 0, (2000, 1, 1), (1000, 1, 1), 2_000_000)
    seed = {"pw": (100, 50, 28, 17.4, 11), "dw": (200, 100, 46, 27, 16.8), "fc": (50, 25, 14, 8.7, 5.5)}
    for op, row in ((pw, seed["pw"]), (dw, seed["dw"]), (fc, seed["fc"])):
        for p, ms in zip(PRECISION_ORDER, row):
            assert layer_latency_ms(op, p, prof) == pytest.approx(ms)


def test_whole_network_on_the_second_unit(mbv2_32):
    prof = load_profile("stm32h747")
    r = predict_network(mbv2_32, uniform(mbv2_32, "int8"), prof, unit="m4")["totals"]
    assert r["units"]["m7"]["busy_ms"] == 0 and r["units"]["m4"]["busy_ms"] == pytest.approx(r["latency_ms"])
    m7 = predict_network(mbv2_32, uniform(mbv2_32, "int8"), prof)["totals"]["latency_ms"]
    # the M4 delivers about a third of the M7's MAC rate (docs/hardware.md §5.4)
    assert 2.5 < r["latency_ms"] / m7 < 4.0


def test_clock_override_scales_every_unit(mbv2_32):
    prof = load_profile("stm32h747")
    op = mbv2_32.layer("features.3.conv.0.0")
    assert prof.clocks(400) == {"m7": 400.0, "m4": 200.0}
    assert layer_latency_ms(op, "int8", prof, "m4", clock_mhz=400) == pytest.approx(
        layer_latency_ms(op, "int8", prof, "m4") * 240 / 200)


# ----------------------------------------------------------------------------------------------------
# LUT, dual-core, prediction, compression
# ----------------------------------------------------------------------------------------------------
def test_lut_dual_options_agree_with_predict_network(tmp_path, mbv2_32):
    prof = load_profile("stm32h747")
    lut = build_lut(mbv2_32, prof, dual=True)
    assert set(lut["layers"]) == set(mbv2_32.layer_names) and lut["fixed_ms"] > 0
    assert all(set(row) == set(PRECISION_ORDER) for row in lut["layers"].values())
    int8 = uniform(mbv2_32, "int8")
    base = predict_network(mbv2_32, int8, prof)["totals"]
    assert base["latency_ms"] == pytest.approx(lut["fixed_ms"] + sum(r["int8"] for r in lut["layers"].values()))
    name = "features.5.conv.0.0"
    op = mbv2_32.layer(name)
    k = balanced_split(mbv2_32, op, "int8", "int8", prof)
    key = f"m7:int8[0:{k}]+m4:int8[{k}:{op.out_channels}]"
    assert key in lut["dual"]["options"][name]
    for entry in (key, {"units": {"m7": {"precision": "int8", "channels": [0, k]},
                                  "m4": {"precision": "int8", "channels": [k, op.out_channels]}}}):
        m = dict(int8, **{name: entry})
        r = predict_network(mbv2_32, m, prof)
        assert r["totals"]["latency_ms"] - base["latency_ms"] == pytest.approx(
            lut["dual"]["options"][name][key]["ms"] - lut["layers"][name]["int8"], abs=1e-5)
        units = r["totals"]["units"]
        assert units["m4"]["busy_ms"] > 0
        assert units["m4"]["idle_ms"] == pytest.approx(r["totals"]["latency_ms"] - units["m4"]["busy_ms"])
        # the split layer runs faster than on the M7 alone, by less than the M4's share allows (≤ 1.31×)
        ms = lut["dual"]["options"][name][key]["ms"]
        assert lut["layers"][name]["int8"] / 1.31 < ms < lut["layers"][name]["int8"]
    path = str(tmp_path / "lut.json")
    write_json_atomic(lut, path, compact=True)
    assert load_lut_json(path, mbv2_32)["layers"] == lut["layers"]
    v1 = analyze_network({"type": "mobilenetv1", "input_size": 32, "width_mult": 0.25})
    with pytest.raises(ValueError, match="lut.json: .*missing layers: .*unknown layers: "):
        load_lut_json(path, v1)


def test_dual_analysis_marks_fitting_options(mbv2_32):
    d = dual_analysis_json(analyze_network({"type": "mobilenetv2", "input_size": 32, "width_mult": 0.35}),
                           "stm32h747", 64, ["int8", "int4"], ["0.5", "balanced"])
    assert d["dual"]["units"] == ["m7", "m4"]
    for layer in d["layers"]:
        opts = layer["dual_options"]
        assert layer["allowed_dual_options"] == [k for k, o in opts.items() if o["live"] <= 64 * 1024]
        assert any(k.startswith("m4:") for k in opts)  # whole layer on the M4
    with pytest.raises(ValueError, match="one processing unit.*stm32h747"):
        dual_analysis_json(mbv2_32, "stm32f746", 512)


def test_compression_ratios(two_block):
    a = two_block
    c = compression(a, uniform(a, "fp32"))
    assert c["ratio"] == pytest.approx(1.0)
    c = compression(a, uniform(a, "int8"))
    # 414 weights, 424 bytes at INT8: the stem's and the classifier's rows pad to whole words
    assert c["weight_ratio"] == pytest.approx(4 * 414 / 424)
    assert c["by_op"]["dwconv"]["layers"] == 2 and c["by_op"]["dwconv"]["precisions"] == {"int8": 2}
    assert set(c["by_stage"]) == {"8x8", "4x4", "head"}
    assert c["size_bytes"] == flash_bytes(a, uniform(a, "int8"))


def test_example_mapping_file_loads_and_matches_its_model():
    spec, layers = load_mapping(os.path.join(TOOLS, "example_precision_mapping.json"))
    a = analyze_network(spec)
    a.check_mapping(layers)
    assert any(isinstance(v, dict) for v in layers.values())  # shows the dual-core form too




def test_seed_model_flags_map_to_registry_names(monkeypatch):
    import tensor_analysis.cli as cc
    monkeypatch.setattr(cc, "list_models", lambda: ["efficientnet_b0", "mobilenetv2", "mobilenetv3_small"])
    assert model_name("mobilenetv3", mode="small") == "mobilenetv3_small"
    assert model_name("efficientnet", model_version="b0") == "efficientnet_b0"
    assert model_name("mobilenetv2", mode="small") == "mobilenetv2"
    with pytest.raises(ValueError, match="needs --mode"):
        model_name("mobilenetv3")


# ----------------------------------------------------------------------------------------------------
# The command-line tools
# ----------------------------------------------------------------------------------------------------
SMALL = ["--model_type", "mobilenetv2", "--width_mult", "0.35", "--input_size", "32"]


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory, spawn_python):
    """The bad-input cases, each run as its own process (exit code, stderr, no traceback); started
    together because interpreter start-up dominates."""
    tmp = tmp_path_factory.mktemp("cli")
    a = analyze_network({"type": "mobilenetv2", "input_size": 32, "width_mult": 0.35})
    m = uniform(a, "int8")
    del m["features.3.conv.1.0"]
    m["features.99.conv"] = "int8"
    (tmp / "names.json").write_text(json.dumps(m))
    (tmp / "broken.json").write_text('{"features.0.0": "int8",')
    cases = {
        "names": ("tensor_latency_predictor.py", SMALL + ["--precision_mapping_file", str(tmp / "names.json")]),
        "hardware": ("tensor_latency_predictor.py", ["--model_type", "mobilenetv2", "--hardware", "stm32x"]),
        "infeasible": ("tensor_memory_filter.py", SMALL + ["--memory_threshold", "8", "--output_file",
                                                           str(tmp / "inf.json")]),
    }
    # one run from the tools' own folder: scripts must work from there too
    procs = {k: spawn_python([os.path.join(TOOLS, script), *args], cwd=TOOLS if k == "hardware" else ROOT)
             for k, (script, args) in cases.items()}
    results = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[k] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results, tmp


def one_error_line(r):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def in_process(main, argv, capsys):
    """Run a tool's main through run_cli as its __main__ does; (exit code, stderr lines)."""
    from tensor_analysis.cli import run_cli
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_bad_mapping_names_and_json(cli_errors, capsys):
    runs, tmp = cli_errors
    line = one_error_line(runs["names"])
    assert "missing layers: features.3.conv.1.0" in line and "unknown layers: features.99.conv" in line
    from tensor_analysis import tensor_latency_predictor
    code, err = in_process(tensor_latency_predictor.main,
                           SMALL + ["--precision_mapping_file", str(tmp / "broken.json")], capsys)
    assert code != 0 and len(err) == 1 and "broken.json" in err[0] and "not valid JSON" in err[0]


def test_cli_unknown_precision_in_mapping(tmp_path, capsys):
    from tensor_analysis import compression_calc
    a = analyze_network({"type": "mobilenetv2", "input_size": 32, "width_mult": 0.35})
    m = uniform(a, "int8")
    m["classifier.1"] = "int3"
    (tmp_path / "prec.json").write_text(json.dumps(m))
    code, err = in_process(compression_calc.main, SMALL + ["--precision_mapping_file", str(tmp_path / "prec.json")],
                           capsys)
    assert code != 0 and len(err) == 1 and "classifier.1" in err[0] and "int3" in err[0]


def test_cli_unknown_hardware_and_negative_threshold(cli_errors, tmp_path, capsys):
    runs, _ = cli_errors
    line = one_error_line(runs["hardware"])
    assert "stm32x" in line and "stm32h747" in line and "esp32s3" in line
    from tensor_analysis import tensor_memory_filter
    out = tmp_path / "neg.json"
    code, err = in_process(tensor_memory_filter.main, SMALL + ["--memory_threshold", "-5", "--output_file", str(out)],
                           capsys)
    assert code != 0 and len(err) == 1 and "--memory_threshold" in err[0] and not out.exists()


def test_cli_filter_infeasible_then_allowed(cli_errors, capsys):
    runs, tmp = cli_errors
    out = tmp / "inf.json"
    line = one_error_line(runs["infeasible"])
    assert "features.2.conv.0.0 (14.0 KB at int2)" in line and "--allow_infeasible" in line and not out.exists()
    from tensor_analysis import tensor_memory_filter
    code, _ = in_process(tensor_memory_filter.main, SMALL + ["--memory_threshold", "8", "--output_file", str(out),
                                                             "--allow_infeasible", "--precisions", "int8,int4",
                                                             "--quiet"], capsys)
    assert code == 0
    d = load_analysis_json(str(out))
    stuck = [l for l in d["layers"] if l.get("infeasible")]
    assert stuck and all(l["allowed_precisions"] == ["int4"] for l in stuck)


def test_cli_tools_in_process(tmp_path, capsys):
    from tensor_analysis import (compression_calc, tensor_latency_predictor, tensor_memory_filter,
                                 tensor_memory_filter_dualcore)
    base = ["--model_type", "mobilenetv2", "--width_mult", "0.35", "--input_size", "32"]
    analysis = str(tmp_path / "a.json")
    assert tensor_memory_filter.main(base + ["--memory_threshold", "64", "--output_file", analysis]) == 0
    out = capsys.readouterr().out
    assert "features.2.conv.1.0" in out and "peak KB" in out
    dual = str(tmp_path / "d.json")
    assert tensor_memory_filter_dualcore.main(base + ["--memory_threshold", "64", "--precisions", "int8,int4",
                                                      "--splits", "0.5,balanced", "--output_file", dual]) == 0
    assert "fastest fitting dual option" in capsys.readouterr().out
    # the narrowest allowed precision everywhere fits; note that per-layer filtering is necessary, not
    # sufficient: a tensor is stored as its consumer reads it, so a wide layer after a narrow one can
    # raise the narrow one's bytes (the predictor reports the exact peak)
    mapping = {l["name"]: l["allowed_precisions"][-1] for l in load_analysis_json(analysis)["layers"]}
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    lut, pred = str(tmp_path / "lut.json"), str(tmp_path / "pred.json")
    assert tensor_latency_predictor.main(["--analysis", analysis, "--precision_mapping_file", str(tmp_path / "m.json"),
                                          "--lut", lut, "--output_file", pred, "--splits", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "latency:" in out and "peak RAM:" in out and "busy" in out
    assert json.load(open(pred))["totals"]["peak_ram_bytes"] <= 64 * 1024
    assert load_lut_json(lut, load_analysis_json(analysis))["dual"]["splits"] == ["0.5"]
    assert compression_calc.main(base + ["--precision", "int4"]) == 0
    assert "model size:" in capsys.readouterr().out
