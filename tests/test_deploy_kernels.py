"""Each C kernel against the numpy reference, one layer per network (deploy.synthetic.kernel_case_network):
the int GEMM kernel (conv, pointwise, grouped, linear), the int depthwise kernel and the float kernel, at
strides 1 and 2, with and without padding, odd channel counts and positions, channel slices that start
off a byte, every input format against every weight format, fixed-point outputs at every width, a fused
residual add in both arithmetics; bit-exact on the host and on the Cortex-M7 under QEMU (the M7 part
skips without the ARM toolchain, except with CI=true). Plus the weight packing the GEMM kernel reads."""
import os

import numpy as np
import pytest

from deploy import c_export, synthetic
from deploy.ir import ConvPart, unpack_bits
from deploy.synthetic import KernelCase

pytestmark = pytest.mark.integration
IMAGES = 6

CASES = [
    # GEMM: pointwise, odd output channels and an odd number of positions (the 2x2 block's remainders)
    KernelCase("pw_u8_w8sym", (16, 5, 5), 11, 1, 1, 0, 1, "int", (8, False), (8, "symmetric"), ("int", 8, False),
               activation=True),
    KernelCase("pw_s8_w8dorefa", (12, 3, 3), 7, 1, 1, 0, 1, "int", (8, True), (8, "dorefa"), ("int", 4, True)),
    KernelCase("pw_u4_w4sym_tflite", (24, 4, 4), 9, 1, 1, 0, 1, "int", (4, False), (4, "symmetric"),
               ("int", 8, True), arithmetic="tflite"),
    KernelCase("pw_s2_w2dorefa", (20, 3, 3), 5, 1, 1, 0, 1, "int", (2, True), (2, "dorefa"), ("int", 2, False),
               activation=True),
    # GEMM: a stem-like 3x3 conv over 3 channels, stride 2 with padding; 3x3 stride 1 at sub-byte widths
    KernelCase("conv3_u8_w4sym_s2", (3, 9, 9), 8, 3, 2, 1, 1, "int", (8, False), (4, "symmetric"), ("int", 8, False),
               activation=True),
    KernelCase("conv3_u4_w8sym", (5, 6, 6), 6, 3, 1, 1, 1, "int", (4, False), (8, "symmetric"), ("int", 4, False)),
    KernelCase("conv3_s2_w2sym_nopad", (6, 7, 7), 4, 3, 2, 0, 1, "int", (2, True), (2, "symmetric"), ("fp16", 0, False)),
    KernelCase("conv3_u8_w4dorefa_split", (7, 5, 5), 10, 3, 1, 1, 1, "int", (8, False), (4, "dorefa"),
               ("int", 8, True), splits=(3,)),
    # GEMM: grouped, and its parts reading the second group's slice of a 4-bit buffer (off a byte)
    KernelCase("grouped_u8_w8dorefa", (8, 5, 5), 6, 3, 1, 1, 2, "int", (8, False), (8, "dorefa"), ("int", 8, False)),
    KernelCase("grouped_u4_w2sym_split", (6, 4, 4), 6, 3, 1, 1, 2, "int", (4, False), (2, "symmetric"),
               ("int", 8, True), splits=(3,)),
    # GEMM: linear (1x1 map), and a pointwise layer with a fused residual add in both arithmetics
    KernelCase("linear_u8_w2sym", (40, 1, 1), 13, 1, 1, 0, 1, "int", (8, False), (2, "symmetric"), ("fp32", 0, False)),
    KernelCase("pw_residual_fine", (16, 4, 4), 16, 1, 1, 0, 1, "int", (8, True), (8, "symmetric"), ("int", 8, True),
               residual=("int", 8)),
    KernelCase("pw_residual_tflite", (16, 4, 4), 16, 1, 1, 0, 1, "int", (8, True), (4, "symmetric"),
               ("int", 8, True), residual=("int", 4), arithmetic="tflite"),
    # depthwise: 4 / 8 / 16 channels per pass at 8 / 4 / 2 bits, block remainders, stride 2, a 5x5 kernel
    KernelCase("dw_u8_w8sym", (12, 6, 6), 12, 3, 1, 1, 12, "int", (8, False), (8, "symmetric"), ("int", 8, False),
               activation=True),
    KernelCase("dw_u4_w4dorefa_s2", (16, 7, 7), 16, 3, 2, 1, 16, "int", (4, False), (4, "dorefa"), ("int", 4, False)),
    KernelCase("dw_s2_w2sym_tail", (20, 5, 5), 20, 3, 1, 1, 20, "int", (2, True), (2, "symmetric"), ("int", 8, True)),
    KernelCase("dw_s4_w8dorefa_tail_s2", (12, 8, 8), 12, 3, 2, 1, 12, "int", (4, True), (8, "dorefa"),
               ("int", 2, True)),
    KernelCase("dw_u4_split_off_byte", (12, 5, 5), 12, 3, 1, 1, 12, "int", (4, False), (4, "symmetric"),
               ("int", 8, False), splits=(5,)),
    KernelCase("dw5_u8_w2dorefa", (8, 7, 7), 8, 5, 1, 2, 8, "int", (8, False), (2, "dorefa"), ("int", 8, False)),
    KernelCase("dw_residual_fine", (16, 4, 4), 16, 3, 1, 1, 16, "int", (8, False), (8, "symmetric"),
               ("int", 8, True), residual=("int", 8)),
    # float kernel: fp32 conv with stride 2, fp16 depthwise, fp16 grouped with a float residual
    KernelCase("fp32_conv3_s2", (3, 9, 9), 5, 3, 2, 1, 1, "fp32", (0, False), output=("int", 8, False),
               activation=True),
    KernelCase("fp16_dw", (8, 5, 5), 8, 3, 1, 1, 8, "fp16", (0, False), output=("fp16", 0, False)),
    KernelCase("fp16_grouped_residual", (6, 4, 4), 6, 3, 1, 1, 2, "fp16", (0, False), output=("fp32", 0, False),
               residual=("fp16", 0)),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    result = {}
    for i, case in enumerate(CASES):
        net = synthetic.kernel_case_network(case, seed=i)
        images = synthetic.random_images(200 + i, net.input_shape, IMAGES, special_values=True)
        result[case.name] = (c_export.write_c_project(net, str(root / case.name), images, np.zeros(IMAGES, int)), net)
    return result


def test_the_cases_reach_every_kernel_and_format(exported):
    kernels, pairs = set(), set()
    for _, net in exported.values():
        part = next(op for op in net.ops if isinstance(op, ConvPart))
        kernels.add(c_export.conv_kernel(part))
        if part.compute == "int":
            fmt = net.buffer(part.input.buffer).format
            pairs.add((fmt.bits, fmt.signed, part.weight_bits, part.weight_grid))
    assert kernels == {"gemm", "depthwise", "float"}
    assert {p[0] for p in pairs} == {8, 4, 2} and {p[2] for p in pairs} == {8, 4, 2}
    assert {p[1] for p in pairs} == {True, False} and {p[3] for p in pairs} == {"dorefa", "symmetric"}


# The host runs the portable C of every kernel; these cases cover each kernel, input and weight width,
# grid, residual form and slice path once (the host build costs seconds; the M7 runs every case).
HOST_CASES = ["pw_u8_w8sym", "pw_s2_w2dorefa", "conv3_u4_w8sym", "grouped_u4_w2sym_split", "linear_u8_w2sym",
              "pw_residual_tflite", "pw_residual_fine", "dw_u4_w4dorefa_s2", "dw_s2_w2sym_tail", "dw_u4_split_off_byte",
              "dw_s4_w8dorefa_tail_s2", "fp16_grouped_residual", "fp32_conv3_s2"]


@pytest.mark.parametrize("case", HOST_CASES)
def test_host_kernel_is_bit_exact(exported, case):
    folder, _ = exported[case]
    result = c_export.run_harness(folder, "host")
    assert result.passed, (result.output + result.errors)[-2000:]


@pytest.fixture(scope="module")
def m7_results(exported):
    if not c_export.m7_toolchain_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: the ARM toolchain and qemu-system-arm must be installed")
        pytest.skip("arm-none-eabi-gcc / qemu-system-arm not installed")
    return {name: c_export.run_harness(folder, "m7", timeout=300) for name, (folder, _) in exported.items()}


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_m7_kernel_is_bit_exact(m7_results, case):
    result = m7_results[case]
    assert result.passed, (result.output + result.errors)[-2000:]


@pytest.mark.parametrize("bits,grid,input_bits", [(8, "symmetric", 8), (4, "dorefa", 4), (2, "symmetric", 2),
                                                  (8, "dorefa", 2), (2, "symmetric", 8), (4, "symmetric", 2)])
def test_gemm_weight_packing_meets_the_columns_lane_pairs(bits, grid, input_bits):
    """Widening each packed word slot by slot (lanes of bytes 0, 2 then 1, 3) must give the row's elements
    in the column's slot order: a group of 32/input_bits slots holds c_export.column_order of its elements,
    the order one input word widens in (the C kernel's slot tables are its inverse)."""
    rng = np.random.default_rng(bits + input_bits)
    lo, hi = (0, 2 ** bits - 1) if grid == "dorefa" else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    weights = rng.integers(lo, hi + 1, size=(3, 5, 3, 3))
    part = ConvPart(name="p", compute="int", input=None, weights=weights, outputs=[], weight_bits=bits,
                    weight_grid=grid)
    packed = c_export.pack_gemm_weights(part, input_bits)
    k_pad = c_export.gemm_row_elements(part, input_bits)
    assert k_pad % (32 // min(bits, input_bits)) == 0 and k_pad >= 45 and packed.size == 3 * k_pad * bits // 8
    per_byte = 8 // bits
    order = c_export.column_order(input_bits)
    assert sorted(order.tolist()) == list(range(32 // input_bits))
    if input_bits == 8:
        assert order.tolist() == [0, 2, 1, 3]
    for row in range(3):
        words = packed[row * k_pad * bits // 8:(row + 1) * k_pad * bits // 8].reshape(-1, 4)
        lanes = []
        for word in words:
            codes = unpack_bits(word, bits, grid == "symmetric", 4 * per_byte).reshape(4, per_byte)
            for slot in range(per_byte):
                lanes += [codes[0, slot], codes[2, slot], codes[1, slot], codes[3, slot]]
        natural = np.zeros(k_pad, dtype=np.int64)
        natural[:45] = weights[row].transpose(1, 2, 0).reshape(-1)  # (ky, kx, ci)
        slots = np.arange(k_pad)
        expected = natural[slots - slots % order.size + order[slots % order.size]]
        assert np.array_equal(np.asarray(lanes), expected)
