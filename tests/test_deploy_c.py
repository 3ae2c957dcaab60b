"""The C export (deploy/c_export.py, deploy/c/): the host build (gcc and make, always required)
reproduces the numpy reference byte for byte on the random graphs and a MobileNetV2-shaped network, the
harness reports mismatches and arena overruns, the C roundings equal the Python ones, the export folder
is replaced atomically, and the Cortex-M7 build does the same under QEMU (skipped without
arm-none-eabi-gcc and qemu-system-arm, except with CI=true, where a missing toolchain fails)."""
import os
import subprocess

import numpy as np
import pytest
from test_deploy_ir import GRAPH_SEEDS, half_test_values, handmade_network

from deploy import c_export, reference, synthetic
from deploy.ir import float_to_half_bits, half_bits_to_float, round_half_even

# every test here compiles C and runs the program (gcc, make, QEMU)
pytestmark = pytest.mark.integration
IMAGES = 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name → (folder, network, images): the random graphs and the handmade network, exported."""
    root = tmp_path_factory.mktemp("exports")
    nets = {f"graph{seed}": synthetic.random_network(seed) for seed in GRAPH_SEEDS}
    nets["handmade"] = handmade_network()
    result = {}
    for i, (name, net) in enumerate(nets.items()):
        images = synthetic.random_images(100 + i, net.input_shape, IMAGES, special_values=True)
        labels = np.arange(IMAGES) % net.num_outputs
        result[name] = (c_export.write_c_project(net, str(root / name), images, labels), net, images)
    return result


@pytest.fixture
def m7_toolchain():
    if not c_export.m7_toolchain_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: arm-none-eabi-gcc, arm-none-eabi-size and qemu-system-arm must be installed "
                        "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")


def assert_bit_exact(result: c_export.HarnessResult, count: int) -> None:
    assert result.returncode == 0, (result.output + result.errors)[-3000:]
    assert result.output.strip().splitlines()[-1] == f"bit-exact: {count}/{count}"
    assert result.passed


def test_host_build_is_bit_exact_with_the_reference(exported):
    for name, (folder, _, _) in exported.items():
        assert_bit_exact(c_export.run_harness(folder, "host"), IMAGES)


def test_host_accuracy_line_counts_argmax_hits(exported):
    folder, net, images = exported["graph0"]
    result = c_export.run_harness(folder, "host")
    logits = reference.run(net, images)
    hits = int(np.sum(np.nanargmax(np.where(np.isnan(logits), -np.inf, logits), axis=1)
                      == np.arange(IMAGES) % net.num_outputs))
    assert f"accuracy: {hits}/{IMAGES}" in result.output


def test_mobilenetv2_shape_is_bit_exact_on_the_host(tmp_path):
    net = synthetic.mobilenetv2_network(precision="mixed", seed=3)
    assert synthetic.multiply_accumulates(net) == 15_611_136  # the project's MobileNetV2-0.35 at 32 px
    images = synthetic.random_images(9, net.input_shape, 3, special_values=True)
    folder = c_export.write_c_project(net, str(tmp_path / "mbv2"), images, [0, 1, 2])
    assert_bit_exact(c_export.run_harness(folder, "host"), 3)


def test_harness_reports_a_mismatch_and_fails(tmp_path):
    net = handmade_network()
    images = synthetic.random_images(1, net.input_shape, 6)
    expected = reference.run(net, images)
    expected[4, 2] = np.nextafter(expected[4, 2], np.float32(np.inf))
    folder = c_export.write_c_project(net, str(tmp_path / "out"), images, np.zeros(6, int), expected)
    result = c_export.run_harness(folder, "host")
    assert result.returncode != 0 and not result.passed
    assert (result.bit_exact, result.count) == (5, 6)
    assert "image 4: output[2] = 0x" in result.output
    assert result.output.strip().splitlines()[-1] == "bit-exact: 5/6"


def test_harness_detects_writes_past_the_arena(tmp_path):
    net = handmade_network()
    images = synthetic.random_images(1, net.input_shape, 2)
    folder = c_export.write_c_project(net, str(tmp_path / "out"), images, [0, 0])
    header = os.path.join(folder, "model.h")
    text = open(header).read()
    # Pretend the arena is 4 bytes smaller: the buffer at its top then runs into the guard bytes.
    text = text.replace(f"#define ADAPTQ_ARENA_BYTES {net.arena_bytes}\n",
                        f"#define ADAPTQ_ARENA_BYTES {net.arena_bytes - 4}\n")
    open(header, "w").write(text)
    result = c_export.run_harness(folder, "host")
    assert "arena guard: overwritten" in result.output and result.returncode != 0


def test_c_roundings_equal_the_python_ones(tmp_path):
    program = tmp_path / "roundings.c"
    program.write_text("""
#include <stdio.h>
#include <stdint.h>
#include "adaptq.h"
int main(int argc, char **argv)
{
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    float v;
    uint32_t h;
    while (fread(&v, sizeof v, 1, in) == 1) {
        uint16_t half = adaptq_float_to_half(v);
        int32_t rounded = (v > -16777216.0f && v < 16777216.0f) ? adaptq_round_half_even(v) : 0;
        fwrite(&half, sizeof half, 1, out);
        fwrite(&rounded, sizeof rounded, 1, out);
    }
    for (h = 0; h < 65536; ++h) {
        float f = adaptq_half_to_float((uint16_t)h);
        fwrite(&f, sizeof f, 1, out);
    }
    return fclose(out);
}
""")
    binary = tmp_path / "roundings"
    subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", "-I", c_export.KERNEL_DIR, str(program),
                    *(os.path.join(c_export.KERNEL_DIR, f) for f in c_export.KERNEL_SOURCES), "-o", str(binary)],
                   check=True)
    x = half_test_values()
    x = np.concatenate([x, (np.random.default_rng(4).uniform(-3e6, 3e6, 100_000)).astype(np.float32),
                        np.arange(-20, 20, dtype=np.float32) + np.float32(0.5)])
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    subprocess.run([str(binary), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    raw = (tmp_path / "out.bin").read_bytes()
    pairs = np.frombuffer(raw[:x.size * 6], dtype=np.dtype([("half", "<u2"), ("rounded", "<i4")]))
    assert np.array_equal(pairs["half"], float_to_half_bits(x))
    in_range = np.abs(x) < 2 ** 24
    assert np.array_equal(pairs["rounded"][in_range], round_half_even(x[in_range]))
    halves = np.frombuffer(raw[x.size * 6:], dtype="<f4")
    bits = np.arange(2 ** 16, dtype=np.uint16)
    not_nan = ~np.isnan(half_bits_to_float(bits))
    assert np.array_equal(halves.view(np.uint32)[not_nan], half_bits_to_float(bits).view(np.uint32)[not_nan])
    assert np.isnan(halves[~not_nan]).all()


# -- the folder ----------------------------------------------------------------------------------------------------
def test_export_replaces_the_folder_atomically(tmp_path, monkeypatch):
    net = handmade_network()
    images = synthetic.random_images(2, net.input_shape, 3)
    target = tmp_path / "out"
    c_export.write_c_project(net, str(target), images, [0, 1, 2])
    assert "#define ADAPTQ_TEST_COUNT 3" in (target / "test_data.h").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]

    c_export.write_c_project(net, str(target), images[:2], [0, 1])
    assert "#define ADAPTQ_TEST_COUNT 2" in (target / "test_data.h").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]

    def fail(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(c_export, "test_data_sources", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        c_export.write_c_project(net, str(target), images, [0, 1, 2])
    assert "#define ADAPTQ_TEST_COUNT 2" in (target / "test_data.h").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_export_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    net = handmade_network()
    with pytest.raises(ValueError, match="files this exporter did not write"):
        c_export.write_c_project(net, str(tmp_path / "mine"), synthetic.random_images(0, net.input_shape, 1), [0])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_export_checks_its_inputs(tmp_path):
    net = handmade_network()
    images = synthetic.random_images(0, net.input_shape, 2)
    with pytest.raises(ValueError, match=r"test_inputs of shape \(2, 3, 2, 2\)"):
        c_export.write_c_project(net, str(tmp_path / "a"), images[:, :3], [0, 0])
    with pytest.raises(ValueError, match="test_labels must be 2 integers"):
        c_export.write_c_project(net, str(tmp_path / "a"), images, [0.5, 1.0])
    with pytest.raises(ValueError, match="expected_outputs must be float32"):
        c_export.write_c_project(net, str(tmp_path / "a"), images, [0, 0], np.zeros((2, 5)))
    assert not (tmp_path / "a").exists()


def test_parse_sizes():
    text = ("arm-none-eabi-gcc ...\nmodel_flash_bytes: 100\nmodel_weights_bytes: 60\nmodel_parameters_bytes: 40\n"
            "arena_bytes: 1664\nscratch_bytes: 320\nkernels_flash_bytes: 6000\n")
    assert c_export.parse_sizes(text) == {"model_flash_bytes": 100, "model_weights_bytes": 60,
                                          "model_parameters_bytes": 40, "arena_bytes": 1664, "scratch_bytes": 320,
                                          "kernels_flash_bytes": 6000}
    with pytest.raises(ValueError, match="no arena_bytes"):
        c_export.parse_sizes(text.replace("arena_bytes", "arena"))


# -- Cortex-M7 on QEMU -------------------------------------------------------------------------------------------------
def test_m7_build_is_bit_exact_under_qemu(exported, m7_toolchain):
    for name, (folder, _, _) in exported.items():
        assert_bit_exact(c_export.run_harness(folder, "m7", timeout=300), IMAGES)


def test_m7_mobilenetv2_shape_is_bit_exact_under_qemu(tmp_path, m7_toolchain):
    net = synthetic.mobilenetv2_network(precision="mixed", seed=4)
    images = synthetic.random_images(8, net.input_shape, 2, special_values=True)
    folder = c_export.write_c_project(net, str(tmp_path / "mbv2"), images, [0, 1])
    assert_bit_exact(c_export.run_harness(folder, "m7", timeout=300), 2)


def test_m7_sizes_match_the_network(exported, m7_toolchain):
    folder, net, _ = exported["graph2"]
    sizes = c_export.read_sizes(folder)
    assert sizes["arena_bytes"] == net.arena_bytes
    scratch = c_export.scratch_sizes(net)
    assert sizes["scratch_bytes"] >= sum(c_export.SCRATCH_ELEMENT_BYTES[k] * n for k, n in scratch.items())
    assert sizes["scratch_bytes"] < sum(c_export.SCRATCH_ELEMENT_BYTES[k] * n for k, n in scratch.items()) + 16
    parts = [op for op in net.ops if hasattr(op, "compute")]
    packed = sum(c_export.packed_weight_bytes(op, net.buffer(op.input.buffer).format.bits) for op in parts)
    assert packed <= sizes["model_weights_bytes"] < packed + 4 * len(parts)  # alignment padding only
    dense = sum((op.weights.size * (op.weight_bits if op.compute == "int" else 16 if op.compute == "fp16" else 32)
                 + 7) // 8 for op in parts)
    assert packed < dense + sum(op.out_channels * 32 // 8 for op in parts)  # GEMM rows pad to one word at most
    assert sizes["model_flash_bytes"] == sizes["model_weights_bytes"] + sizes["model_parameters_bytes"]
    assert 0 < sizes["model_parameters_bytes"] and 1000 < sizes["kernels_flash_bytes"] < 64 * 1024
