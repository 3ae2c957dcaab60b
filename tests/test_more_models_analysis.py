"""Issue 8, analysis side: the element-wise activations of MobileNetV3 / EfficientNet (hard-swish,
hard-sigmoid, sigmoid, SiLU) cost per element in the latency model, and squeeze-excitation keeps the
right tensors alive in the memory model."""
import copy
import json

import pytest
import torch
import torch.nn as nn

from models.efficientnet import MBConv
from models.layers import MixedPrecisionConv2d
from models.mobilenetv3 import InvertedResidual
from models.precisions import PRECISION_ORDER
from tensor_analysis.analysis_file import analysis_document
from tensor_analysis.graph import ACTIVATION_KINDS, analyze_model, analyze_network, as_analysis
from tensor_analysis.latency import fixed_operator_ms, layer_cycles
from tensor_analysis.lut import build_lut
from tensor_analysis.memory import layer_bytes, operator_bytes, uniform_size
from tensor_analysis.model_table import markdown_table, model_rows
from tensor_analysis.prediction import predict_network
from tensor_analysis.profiles import load_profile, parse_profile


@pytest.fixture(scope="module")
def se_block():
    """EfficientNet-B0 MBConv with residual: 16 → expand 96 → depthwise 3×3 → SE (96 → 4 → 96) →
    project 16, + input; on a 16×8×8 input."""
    block = MBConv(16, 16, 6, 3, 1, 0.2, nn.SiLU, True, True, PRECISION_ORDER, "uniform")
    return analyze_model(block, (16, 8, 8))


def test_se_block_operators_activations_and_macs(se_block):
    a = se_block
    assert [(o.name, o.op, o.activations) for o in a.operators] == [
        ("block.0.0", "pwconv", ["silu"]),
        ("block.1.0", "dwconv", ["silu"]),
        ("block.2.avgpool.pool", "pool", []),
        ("block.2.fc1", "pwconv", ["silu"]),       # SiLU inside B0's SE
        ("block.2.fc2", "pwconv", ["sigmoid"]),
        ("block.2.mul", "mul", []),
        ("block.3.0", "pwconv", [])]               # linear projection, the residual add fused into it
    # stochastic depth is the identity: no operator, so the add's operand is the projection's output
    assert a.layer("block.3.0").fused == ["add"]
    assert a.macs == 16 * 96 * 64 + 96 * 9 * 64 + 96 * 4 + 4 * 96 + 96 * 16 * 64


def test_se_block_live_bytes_by_hand(se_block):
    """INT8 bytes = elements. X block input 1024, E expanded 6144, D depthwise output 6144, p pooled 96,
    s1 squeezed 4, s scale 96, M = D·s 6144, Y sum 1024 (the projection adds X in its epilogue: no
    pre-add tensor). X stays alive to the add; D stays alive from the pool through fc1, fc2 to the
    multiply."""
    a = se_block
    X, E, D, p, s1, s, M, Y = 1024, 6144, 6144, 96, 4, 96, 6144, 1024
    layerwise = [X + E,                # expand (X is its input)
                 E + D + X,            # depthwise, X kept
                 D + p + X,            # pool
                 p + s1 + D + X,       # fc1: D and X kept
                 s1 + s + D + X,       # fc2
                 s + D + M + X,        # multiply: scale, D, product, X kept
                 M + X + 4 * Y]        # projection with the residual add; Y is this graph's output: float32
    inplace = list(layerwise)
    inplace[1] = X + max(E, D) + 64    # in-place depthwise: one 8×8 output channel extra
    inplace[5] = s + D + X             # the SE product overwrites D (a 1×1 depthwise product)
    size = uniform_size(a, "int8")
    assert [operator_bytes(a, o, size)["live"] for o in a.operators] == layerwise
    assert [operator_bytes(a, o, size, True)["live"] for o in a.operators] == inplace
    # the filter's per-layer view at FP16: every tensor twice the bytes
    b = layer_bytes(a, a.layer("block.2.fc1"), "fp16")
    assert (b["input"], b["output"], b["kept"], b["live"]) == (2 * p, 2 * s1, 2 * (D + X), 2 * (p + s1 + D + X))


def test_mobilenetv3_block_records_hard_swish_and_hard_sigmoid_and_relu_is_free():
    block = InvertedResidual(16, 3, 64, 16, True, nn.Hardswish, 1, True, PRECISION_ORDER, "uniform")
    a = analyze_model(block, (16, 8, 8))
    assert [(o.name, o.activations) for o in a.operators if o.is_layer] == [
        ("block.0.0", ["hswish"]), ("block.1.0", ["hswish"]), ("block.2.fc1", []),  # ReLU in the SE: free
        ("block.2.fc2", ["hsigmoid"]), ("block.3.0", [])]


def test_activation_cost_per_output_element_at_the_layer_precision(se_block):
    m7 = load_profile("stm32h747").units["m7"]
    for name, kind in (("block.1.0", "silu"), ("block.2.fc2", "sigmoid")):
        op = se_block.layer(name)
        bare = copy.copy(op)
        bare.activations = []
        for p in PRECISION_ORDER:
            extra = layer_cycles(op, p, m7) - layer_cycles(bare, p, m7)
            assert extra == pytest.approx(op.out_elements * m7.activation_cycles[kind][p])
        # a split layer pays for its share of the outputs
        assert (layer_cycles(op, "int8", m7, 0.25) - layer_cycles(bare, "int8", m7, 0.25)
                == pytest.approx(0.25 * op.out_elements * m7.activation_cycles[kind]["int8"]))
    # the integer path is a table lookup; float computes exp and a division: sigmoids cost more in float
    assert m7.activation_cycles["silu"]["fp32"] > m7.activation_cycles["hswish"]["fp32"] > m7.activation_cycles["silu"]["int8"]
    for name in ("stm32h747", "stm32f746", "cortex_m4f", "esp32s3", "gap9_cluster", "artifact"):
        for unit in load_profile(name).units.values():
            assert set(unit.activation_cycles) == set(ACTIVATION_KINDS)


def test_profile_activation_cycles_forms_defaults_and_errors():
    raw = dict(load_profile("stm32h747").raw)
    units = copy.deepcopy(raw["units"])
    del units["m7"]["activation_cycles"]
    units["m4"]["activation_cycles"] = {"silu": 9}
    prof = parse_profile({**raw, "units": units}, "custom.json")
    # absent: the profile's 'other' element-wise cost; a number: every precision
    assert prof.units["m7"].activation_cycles["hswish"] == {p: 2 for p in PRECISION_ORDER}
    assert prof.units["m4"].activation_cycles["silu"] == {p: 9 for p in PRECISION_ORDER}
    units["m4"]["activation_cycles"] = {"gelu": 3}
    with pytest.raises(ValueError, match=r"custom.json: units.m4.activation_cycles: unknown activation 'gelu'"):
        parse_profile({**raw, "units": units}, "custom.json")
    units["m4"]["activation_cycles"] = {"silu": {"int8": 3}}
    with pytest.raises(ValueError, match=r"activation_cycles.silu: missing precisions fp32"):
        parse_profile({**raw, "units": units}, "custom.json")


class SigmoidFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MixedPrecisionConv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(torch.sigmoid(x))


def test_activation_with_nothing_to_fuse_into_is_an_operator_of_its_own():
    a = analyze_model(SigmoidFirst(), (3, 4, 4))
    assert [(o.name, o.op) for o in a.operators] == [("sigmoid", "sigmoid"), ("conv", "pwconv")]
    prof = load_profile("stm32h747")
    m7 = prof.units["m7"]
    assert fixed_operator_ms(a.operators[0], prof) == pytest.approx(
        (m7.overhead_cycles + 48 * m7.activation_cycles["sigmoid"]["int8"]) / 480e3)


def test_activations_survive_analysis_json_and_reach_the_lut():
    a = analyze_network({"type": "efficientnet_b0", "input_size": 16, "width_mult": 0.25, "num_classes": 10})
    d = json.loads(json.dumps(analysis_document(a, 256)))
    assert all(entry["activations"] for entry in d["layers"] if entry["name"].endswith("fc2"))
    assert build_lut(as_analysis(d), "stm32h747") == build_lut(a, "stm32h747")
    # EfficientNet-B0 vs -Lite0 at FP32: the sigmoids make B0's float layers slower per MAC
    lite = analyze_network({"type": "efficientnet_lite0", "input_size": 16, "width_mult": 0.25, "num_classes": 10})

    def fp32_ms_per_mmac(net):
        return predict_network(net, {n: "fp32" for n in net.layer_names}, "stm32h747")["totals"]["layers_ms"] / net.macs

    assert fp32_ms_per_mmac(a) > fp32_ms_per_mmac(lite)


def test_efficientnet_b0_graph_counts():
    a = analyze_network({"type": "efficientnet_b0", "input_size": 32, "width_mult": 1.0, "num_classes": 10,
                         "stochastic_depth_prob": 0.5})
    ops = [o.op for o in a.operators]
    # 16 MBConv blocks, each with SE (pool + multiply); residual adds where stride 1 and in == out:
    # Σ (repeats − 1) over the stages (1, 2, 2, 3, 3, 4, 1) = 9 at width 1.0 (narrower widths round
    # some channel counts together and gain residuals, as torchvision's), each fused into its
    # projection; plus the head's pool
    assert ops.count("mul") == 16 and ops.count("add") == 0 and ops.count("pool") == 17
    assert sum(o.fused == ["add"] for o in a.operators) == 9
    assert sum(1 for o in a.operators if "silu" in o.activations) == 1 + 16 * 2 - 1 + 16 + 1  # stem, expand+dw, fc1, head
    assert not any("stochastic" in o.name for o in a.operators)


def test_model_table_reproduces_the_published_mobilenetv2_figures():
    rows = model_rows(["mobilenetv2"], [224])
    r = rows[0]
    assert round(r["macs"] / 1e6, 1) == 300.8
    assert r["peak_ram_bytes"] == 1470 * 1024 and r["peak_ram_bytes_inplace"] == 1372 * 1024
    table = markdown_table(rows, "stm32h747 Cortex-M7 @480 MHz")
    assert "| mobilenetv2 | 224 | 300.8 | 3.50 | 1470 (features.2.conv.1.0) | 1372 (features.2.conv.0.0) |" in table


def test_model_table_cli_writes_markdown_and_rejects_bad_flags(tmp_path, capsys):
    from tensor_analysis import model_table
    out = tmp_path / "table.md"
    assert model_table.main(["--models", "mobilenetv3_small,efficientnet_lite0", "--sizes", "32", "--num_classes", "10",
                             "--width_mult", "0.35", "--output_file", str(out)]) == 0
    text = out.read_text()
    assert "| mobilenetv3_small | 32 |" in text and "| efficientnet_lite0 | 32 |" in text
    for argv, message in ((["--models", "efficientnet"], "--models: unknown model efficientnet"),
                          (["--sizes", "0"], "--sizes: expected positive"),
                          (["--precision", "int3"], "--precision: unknown precision 'int3'")):
        with pytest.raises(ValueError, match=message):
            model_table.main(argv)
    capsys.readouterr()
