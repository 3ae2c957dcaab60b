"""Profiles → lut.json (tensor_analysis/measured_lut.py, tensor_analysis/profile_to_lut.py): measured entries
are count × cycles per instruction / clock, every other entry is the base table's, the table loads as
the search loads it (load_lut_json with the model's analysis), and a profile of another network, or of
mixed counters, is refused with one line."""
import json

import pytest

from deploy import c_export, profiling, synthetic
from models.files import write_json_atomic
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut, load_lut_json
from tensor_analysis.measured_lut import count_to_ms, layer_counts, measured_lut
from tensor_analysis.profile_to_lut import main

SPEC = {"type": "mobilenetv2", "input_size": 32, "width_mult": 0.35, "num_classes": 10}


@pytest.fixture(scope="module")
def analysis():
    return analyze_network(SPEC)


@pytest.fixture(scope="module")
def base_lut(analysis, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base") / "lut.json")
    write_json_atomic(build_lut(analysis, "stm32h747", dual=True), path, compact=True)
    return path


def fake_profile(net, counter="instructions", scale=1):
    """A profile document of ``net`` with made-up counts (no QEMU): 7 per MAC + 1000 per op."""
    table = {"ops": profiling.profile_table(net), "network": net.metadata}
    counts = [scale * (7 * row["macs"] + 1000) for row in table["ops"]]
    lines = [f"counter {counter} 40", "images 2", "calibration 2000000 2000000"]
    lines += [f"op {i} {c}" for i, c in enumerate(counts)] + [f"total {sum(counts) + 50}", "bit-exact: 2/2"]
    return profiling.profile_document(table, profiling.parse_profile_output("\n".join(lines)), "test")


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """{precision: path} of made-up profiles of the synthetic MobileNetV2 at int8 and int4."""
    root = tmp_path_factory.mktemp("profiles")
    paths = {}
    for precision in ("int8", "int4"):
        doc = fake_profile(synthetic.mobilenetv2_network(precision=precision, model_names=True),
                           scale=1 if precision == "int8" else 2)
        paths[precision] = str(root / f"{precision}.json")
        profiling.write_json(doc, paths[precision])
    return paths


def expected_counts(path):
    """{layer: count} as the converter charges them: the layer's parts, and the Quantize for the stem."""
    doc = json.load(open(path))
    counts = {}
    for op in doc["ops"]:
        if op["kind"] not in ("quantize", "pool"):
            counts[op["layer"]] = counts.get(op["layer"], 0) + op["count"]
    counts["features.0.0"] += doc["ops"][0]["count"]
    return counts


def test_profiles_fill_a_table_the_search_loads(profiles, base_lut, analysis, tmp_path, run_main):
    out = tmp_path / "lut.json"
    code, err = run_main(main, ["--profile", profiles["int8"], "--profile", profiles["int4"], "--base_lut", base_lut,
                                "--output_lut", out, "--clock_mhz", "400", "--cycles_per_instruction", "1.5"])
    assert code == 0, err
    lut = load_lut_json(str(out), analysis)
    base = json.load(open(base_lut))
    for precision, path in profiles.items():
        for layer, count in expected_counts(path).items():
            assert lut["layers"][layer][precision] == pytest.approx(count * 1.5 / (400 * 1e3), rel=1e-12)
            assert lut["measured"]["layers"][layer][precision]["count"] == count
    for layer, row in lut["layers"].items():
        for precision in ("fp32", "fp16", "int2"):
            assert row[precision] == base["layers"][layer][precision]
    m = lut["measured"]
    assert m["entries"] == {"measured": 2 * len(analysis.layers), "from_base": 3 * len(analysis.layers)}
    assert (m["counter"], m["cycles_per_instruction"], m["clock_mhz"], m["base"]) == ("instructions", 1.5, 400,
                                                                                     base_lut)
    pools = [json.load(open(p))["ops"][-2]["count"] for p in profiles.values()]
    assert lut["fixed_ops"]["pool"] == pytest.approx(sum(pools) / 2 * 1.5 / 400e3)
    assert lut["fixed_ms"] == pytest.approx(sum(lut["fixed_ops"].values()))
    assert "dual" in lut and "base table" in m["dual"]


def test_unmeasured_entries_are_predicted_without_a_base_table(profiles, analysis, tmp_path, run_main):
    out = tmp_path / "lut.json"
    code, err = run_main(main, ["--profile", profiles["int8"], "--output_lut", out, "--hardware", "stm32h747"])
    assert code == 0, err
    lut = load_lut_json(str(out), analysis)
    predicted = build_lut(analysis, "stm32h747")
    layer = "features.5.conv.1.0"
    assert lut["layers"][layer]["int4"] == predicted["layers"][layer]["int4"]
    # instructions x the kernels' profile's assumed 0.8 cycles per instruction, at 480 MHz
    assert lut["layers"][layer]["int8"] == pytest.approx(expected_counts(profiles["int8"])[layer] * 0.8 / 480e3)
    assert lut["measured"]["base"].startswith("predicted by stm32h747")


def test_layers_split_over_precisions_are_left_to_the_base():
    doc = fake_profile(synthetic.mobilenetv2_network(precision="mixed", seed=3, model_names=True))
    layers, fixed, mixed = layer_counts(doc)
    assert mixed and not set(mixed) & set(layers) and set(fixed) == {"pool"}
    assert len(layers) + len(mixed) == 53


def test_cycles_take_no_cycles_per_instruction(analysis):
    doc = fake_profile(synthetic.mobilenetv2_network(precision="int8", model_names=True), counter="cycles")
    base = build_lut(analysis, "stm32h747")
    lut = measured_lut([("board.json", doc)], base, "base", clock_mhz=480)
    assert lut["layers"]["features.1.conv.1"]["int8"] == pytest.approx(
        count_to_ms(7 * 131072 + 1000, "cycles", 480, 99.0))
    assert lut["measured"]["cycles_per_instruction"] is None
    with pytest.raises(ValueError, match="these profiles count cycles"):
        measured_lut([("board.json", doc)], base, "base", cycles_per_instruction=1.0)
    qemu = fake_profile(synthetic.mobilenetv2_network(precision="int4", model_names=True))
    with pytest.raises(ValueError, match="both instructions .QEMU. and cycles"):
        measured_lut([("board.json", doc), ("qemu.json", qemu)], base, "base")


@pytest.mark.parametrize("network, message", [
    (lambda: synthetic.random_network(0), "are not in the base table"),
    (lambda: synthetic.mobilenetv2_network(0.5, 32, precision="int8", model_names=True), "MACs, the table's model"),
])
def test_a_profile_of_another_network_is_refused(network, message, base_lut, tmp_path, run_main):
    path = str(tmp_path / "p.json")
    profiling.write_json(fake_profile(network()), path)
    code, err = run_main(main, ["--profile", path, "--base_lut", base_lut, "--output_lut", tmp_path / "out.json"])
    assert code == 2 and len(err) == 1 and message in err[0] and path in err[0], err
    assert not (tmp_path / "out.json").exists()


def test_a_file_that_is_no_profile_is_refused(base_lut, tmp_path, run_main):
    code, err = run_main(main, ["--profile", base_lut, "--output_lut", tmp_path / "out.json"])
    assert code == 2 and len(err) == 1 and "unknown schema 'adaptqnet/lut/1'" in err[0], err


def test_help_names_every_flag():
    from tensor_analysis.profile_to_lut import build_parser
    text = build_parser().format_help()
    for flag in ("--profile", "--output_lut", "--base_lut", "--analysis", "--hardware", "--clock_mhz",
                 "--cycles_per_instruction", "--overwrite"):
        assert flag in text


def test_a_qemu_profile_closes_the_loop(analysis, base_lut, tmp_path, run_main):
    if not profiling.qemu_toolchain_available():
        import os
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: arm-none-eabi-gcc and qemu-system-arm must be installed")
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")
    net = synthetic.mobilenetv2_network(precision="int8", model_names=True)
    folder = c_export.write_c_project(net, str(tmp_path / "c"), synthetic.random_images(1, net.input_shape, 1), [0])
    profile = str(tmp_path / "profile.json")
    profiling.run_profile(folder, images=1, output_json=profile, timeout=300)
    code, err = run_main(main, ["--profile", profile, "--base_lut", base_lut, "--output_lut", tmp_path / "lut.json"])
    assert code == 0, err
    lut = load_lut_json(str(tmp_path / "lut.json"), analysis)
    total_ms = sum(row["int8"] for row in lut["layers"].values()) + lut["fixed_ms"]
    assert total_ms == pytest.approx(json.load(open(profile))["total"]["ops_count"] * 0.8 / 480e3, rel=1e-9)
