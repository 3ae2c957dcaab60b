"""C99 export of an ``IntegerNetwork``: a self-contained folder that builds and checks itself.

``write_c_project(network, output_dir, test_inputs, test_labels)`` writes::

    OUT/
      adaptq.h, adaptq.c      kernels (copied from deploy/c/): every case of the IR, no libraries
      model.h, model.c        generated: weights (const, packed), per-part constants, buffer table with
                              the arena offsets, ADAPTQ_ARENA_BYTES, int adaptq_predict(const float *, float *)
      test_data.h, test_data.c  generated: N input images, labels and the reference's output bytes, in
                              their own section (PSRAM on the M7 build) so the model's Flash excludes them
      main.c                  harness: runs all N, reports mismatches, "accuracy: X/N", "bit-exact: K/N"
      startup_m7.c, mps2_an500.ld  vector table, FPU enable and memory map for QEMU's mps2-an500 (Cortex-M7)
      Makefile                host / run-host, m7 / run-m7, sizes, clean
      network.json            the IR the folder was generated from
      README.md

The folder is built next to its target under a temporary name and renamed over it at the end, so a
reader never sees a half-written export; an existing folder is only replaced if it is an export.
``run_harness`` builds and runs one target and parses its result lines; ``read_sizes`` runs
``make sizes`` (needs arm-none-eabi-size) and ``parse_sizes`` parses its output.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from deploy import profiling, reference
from deploy.arena import plan_arena
from deploy.ir import (ConvPart, FixedPointEpilogue, FloatToInt, Format, GlobalAvgPool, IntegerNetwork, Quantize,
                       accumulator_bounds, float_to_half_bits, pack_bits)

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")
KERNEL_SOURCES = ("adaptq.c", "adaptq_conv_int.c", "adaptq_dwconv_int.c", "adaptq_conv_float.c")
KERNEL_FILES = ("adaptq.h", "adaptq_internal.h", *KERNEL_SOURCES, "main.c", "startup_m7.c", "mps2_an500.ld", "Makefile",
                "profile.h", "profile.c", "profile_main.c")
GUARD_BYTES = 16  # the Makefile's GUARD_BYTES
# Everything the exporter writes; an existing folder holding anything else is not replaced.
DEPLOYMENT_FILE = "deployment.json"  # export_c.py's record of what it measured
EXPORT_FILES = set(KERNEL_FILES) | {"model.h", "model.c", "test_data.h", "test_data.c", "network.json", "README.md",
                                    "build", DEPLOYMENT_FILE, profiling.OPS_FILE, profiling.OPS_HEADER,
                                    profiling.PROFILE_FILE}
# PSRAM of mps2-an500 less room for the stack, which QEMU's semihosting puts at its top.
M7_TEST_DATA_LIMIT = 15 * 2 ** 20
KINDS = {"int": "ADAPTQ_INT", "fp16": "ADAPTQ_FP16", "fp32": "ADAPTQ_FP32"}


# -- C literals ---------------------------------------------------------------------------------------------
def _float_literal(x: float) -> str:
    """Exact C99 literal of a float32 value (hex float; INFINITY for ±inf)."""
    x = float(np.float32(x))
    if np.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return float.hex(x) + "f"


def _int_literal(x: int, bits: int) -> str:
    x = int(x)
    if bits == 64:
        return f"INT64_C({x})"
    return str(x) if x != -2 ** 31 else "(-2147483647 - 1)"


def _array(ctype: str, name: str, values: Iterable[str], section: str, per_line: int = 16) -> str:
    items = list(values)
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(items)}] {section} = {{\n    {body}\n}};\n"


def _ints(a: np.ndarray, bits: int = 32) -> List[str]:
    return [_int_literal(v, bits) for v in np.asarray(a).reshape(-1).tolist()]


def _floats(a: np.ndarray) -> List[str]:
    return [_float_literal(v) for v in np.asarray(a, dtype=np.float32).reshape(-1).tolist()]


def _to_int(t: Optional[FloatToInt]) -> str:
    if t is None:
        return "{0.0f, 0.0f, 0.0f, 0, 0}"
    return (f"{{{_float_literal(t.lo_r)}, {_float_literal(t.hi_r)}, {_float_literal(t.inv_scale)}, "
            f"{t.lo}, {t.hi}}}")


# -- model.c / model.h -------------------------------------------------------------------------------------------
# -- kernels and the weight orders they read (deploy/c/adaptq_conv_int.c, adaptq_dwconv_int.c) ------------------
KERNELS = {"gemm": "ADAPTQ_KERNEL_INT_GEMM", "depthwise": "ADAPTQ_KERNEL_INT_DEPTHWISE", "float": "ADAPTQ_KERNEL_FLOAT"}
# Sub-byte weights and activations widen to 16-bit lanes scaled by 2^(8 - bits) each; the scaled
# accumulator must stay in int32.
_LANE_SCALE_LIMIT = 2 ** 31


def conv_kernel(op: ConvPart) -> str:
    """The kernel that runs a part: float compute, int depthwise (one input and one output channel
    per group), or the int im2col + GEMM kernel for every other shape."""
    if op.compute != "int":
        return "float"
    return "depthwise" if op.in_channels // op.groups == 1 and op.out_channels == op.groups else "gemm"


def column_order(input_bits: int) -> np.ndarray:
    """The element each slot of a group of 32/bits column slots holds: one word of 32/bits input codes
    widens, code slot s of bytes (0, 2) then (1, 3), into lane pairs (E = 8/bits codes per byte):
    pair k = 2s + parity holds elements (parity·E + s, (parity + 2)·E + s). At 8 bits: [0, 2, 1, 3]."""
    e = 8 // input_bits
    order = []
    for k in range(2 * e):
        s, parity = divmod(k, 2)
        order += [parity * e + s, (parity + 2) * e + s]
    return np.asarray(order)


def gemm_row_elements(op: ConvPart, input_bits: int) -> int:
    """The reduction kh·kw·(in/groups) padded to whole weight words and whole input words (32/bits
    codes of the narrower)."""
    per_word = 32 // min(op.weight_bits, input_bits)
    return -(-op.reduction_size // per_word) * per_word


def pack_gemm_weights(op: ConvPart, input_bits: int) -> np.ndarray:
    """Packed weight rows in the order the GEMM kernel widens them (adaptq_conv_int.c's docstring):
    each row in (ky, kx, ci) order, zero-padded to ``gemm_row_elements``, its elements permuted like
    the column's slots (``column_order`` of the input's width), then every block of 32/bits codes
    placed so that slot s of bytes (0, 2) and (1, 3) holds consecutive lane pairs."""
    bits, per_byte = op.weight_bits, 8 // op.weight_bits
    rows = op.weights.astype(np.int64).transpose(0, 2, 3, 1).reshape(op.out_channels, -1)
    k_pad = gemm_row_elements(op, input_bits)
    padded = np.zeros((op.out_channels, k_pad), dtype=np.int64)
    padded[:, :rows.shape[1]] = rows
    order = column_order(input_bits)
    j = np.arange(k_pad)
    virtual = padded[:, (j - j % order.size) + order[j % order.size]]
    v = np.arange(4 * per_byte)  # one weight word: lane pair k = v // 2 at slot k // 2, bytes by parity and lane
    pair, lane = v // 2, v % 2
    byte = pair % 2 + 2 * lane
    slot = pair // 2
    codes = virtual.reshape(op.out_channels, -1, 4 * per_byte) & (2 ** bits - 1)
    words = np.zeros(codes.shape[:2] + (4,), dtype=np.int64)
    for element in range(4 * per_byte):
        words[:, :, byte[element]] |= codes[:, :, element] << (slot[element] * bits)
    return words.reshape(-1).astype(np.uint8)


def _check_lane_scale(op: ConvPart, input_format: Format) -> None:
    levels = input_format.levels
    bound = accumulator_bounds(op.weights, op.weight_bits, op.weight_grid, levels).max(initial=0)
    scale = 2 ** (8 - op.weight_bits) * 2 ** (8 - input_format.bits)
    if op.weight_grid == "dorefa":
        bound = max(int(bound), int(levels * (2 ** op.weight_bits - 1) * op.reduction_size))
    if int(bound) * scale >= _LANE_SCALE_LIMIT:
        raise ValueError(f"conv {op.name!r}: its accumulator scaled by {scale} (sub-byte codes widened to "
                         f"16-bit lanes) may reach 2^31; the C kernels cannot run it")


def packed_weight_bytes(op: ConvPart, input_bits: int = 8) -> int:
    """Bytes of a part's weights as the C export stores them (GEMM rows padded to whole words)."""
    kernel = conv_kernel(op)
    if kernel == "gemm":
        return op.out_channels * gemm_row_elements(op, input_bits) * op.weight_bits // 8
    if kernel == "depthwise":
        return (op.weights.size * op.weight_bits + 7) // 8
    return op.weights.size * (2 if op.compute == "fp16" else 4)


SCRATCH_ELEMENT_BYTES = {"columns": 2, "acc": 4, "floats": 4, "codes": 8}  # codes: a code and a real each


def scratch_sizes(network: IntegerNetwork) -> Dict[str, int]:
    """Elements of each scratch array the kernels need for the network's largest part (adaptq_scratch)."""
    sizes = {"columns": 1, "acc": 1, "floats": 1, "codes": 1}
    for op in network.ops:
        if not isinstance(op, ConvPart):
            continue
        out = op.out_channels
        kernel = conv_kernel(op)
        if kernel == "gemm":
            bits = network.buffer(op.input.buffer).format.bits
            sizes["columns"] = max(sizes["columns"], 2 * gemm_row_elements(op, bits))
            sizes["acc"] = max(sizes["acc"], 2 * out)
        elif kernel == "depthwise":
            sizes["columns"] = max(sizes["columns"], out * op.kernel[0] * op.kernel[1])
            sizes["acc"] = max(sizes["acc"], out)
        else:
            sizes["floats"] = max(sizes["floats"], op.reduction_size + out)
        if op.residual:
            sizes["codes"] = max(sizes["codes"], out)
    return sizes


def _weights_source(index: int, op: ConvPart, input_format: Format) -> str:
    name = f"weights_{index}"
    kernel = conv_kernel(op)
    if kernel == "gemm":
        _check_lane_scale(op, input_format)
        packed = pack_gemm_weights(op, input_format.bits)
    elif kernel == "depthwise":
        packed = pack_bits(op.weights, op.weight_bits, op.weight_grid == "symmetric")
    elif op.compute == "fp16":
        bits = float_to_half_bits(op.weights.astype(np.float32).transpose(0, 2, 3, 1)).reshape(-1)
        return _array("uint16_t", name, (str(v) for v in bits.tolist()), "ADAPTQ_WEIGHTS", 16)
    else:
        return _array("float", name, _floats(op.weights.transpose(0, 2, 3, 1)), "ADAPTQ_WEIGHTS", 6)
    return _array("uint8_t", name, (str(v) for v in packed.tolist()), "ADAPTQ_WEIGHTS", 24) \
        .replace("] ADAPTQ_WEIGHTS", "] ADAPTQ_ALIGNED(4) ADAPTQ_WEIGHTS", 1)


def _fixed_point_source(tag: str, ep: FixedPointEpilogue) -> Tuple[List[str], str]:
    # doubled (adaptq.h): |2B| < 2^31 and p + 1 <= 31, since validation keeps acc·2^p + B below 2^30
    right_shift = ep.residual is None and bool(np.all(ep.shift < 0))
    uniform = all(np.all(a == a[0]) for a in (ep.acc_shift, ep.lo, ep.hi) if a.size)
    path = "ADAPTQ_RIGHT_SHIFT_UNIFORM" if right_shift and uniform else \
        "ADAPTQ_RIGHT_SHIFT" if right_shift else "ADAPTQ_RIGHT_SHIFT_NONE"
    out = [_array("int32_t", f"multiplier_{tag}", _ints(ep.multiplier), "ADAPTQ_PARAMS", 8),
           _array("int8_t", f"shift_{tag}", _ints(ep.shift), "ADAPTQ_PARAMS", 24),
           _array("int32_t", f"bias2_{tag}", _ints(2 * ep.bias.astype(np.int64)), "ADAPTQ_PARAMS", 8),
           _array("int8_t", f"acc_shift1_{tag}", _ints(ep.acc_shift + 1), "ADAPTQ_PARAMS", 24),
           _array("int16_t", f"lo_{tag}", _ints(ep.lo), "ADAPTQ_PARAMS", 16),
           _array("int16_t", f"hi_{tag}", _ints(ep.hi), "ADAPTQ_PARAMS", 16)]
    refs = (f".epilogue = ADAPTQ_EPILOGUE_FIXED, .multiplier = multiplier_{tag}, .shift = shift_{tag}, "
            f".bias2 = bias2_{tag}, .acc_shift1 = acc_shift1_{tag}, .lo = lo_{tag}, .hi = hi_{tag}, "
            f".right_shift = {path}")
    if ep.residual is not None:
        r = ep.residual
        types = {"t_lo": "int16_t", "t_hi": "int16_t", "t_multiplier": "int32_t", "skip_multiplier": "int32_t",
                 "output_multiplier": "int32_t", "t_shift": "int8_t", "skip_shift": "int8_t", "output_shift": "int8_t"}
        out += [_array(types[name], f"{name}_{tag}", _ints(getattr(r, name)), "ADAPTQ_PARAMS", 8) for name in r.FIELDS]
        fields = ", ".join(f".{name} = {name}_{tag}" for name in r.FIELDS) + f", .left_shift = {r.left_shift}"
        out.append(f"static const adaptq_residual_add add_{tag} ADAPTQ_PARAMS = {{{fields}}};\n")
        refs += f", .add = &add_{tag}"
    return out, refs


def _conv_source(index: int, op: ConvPart, buffer_index: Dict[str, int], input_format: Format) -> str:
    kernel = conv_kernel(op)
    out = [f"/* {op.name}: layer {op.layer!r} channels {list(op.layer_channels)}, {op.compute}"
           + (f" w{op.weight_bits} {op.weight_grid}" if op.compute == "int" else "") + f", {kernel} kernel */\n",
           _weights_source(index, op, input_format)]
    entries = []
    for j, o in enumerate(op.outputs):
        ep, tag = o.epilogue, f"{index}_{j}"
        fields = {"buffer": buffer_index[o.buffer], "channel_offset": o.channel_offset,
                  "first": o.part_channels[0], "count": o.part_channels[1] - o.part_channels[0]}
        if isinstance(ep, FixedPointEpilogue):
            arrays, refs = _fixed_point_source(tag, ep)
            out += arrays
        else:
            out += [_array("float", f"scale_{tag}", _floats(ep.scale), "ADAPTQ_PARAMS", 6),
                    _array("float", f"offset_{tag}", _floats(ep.offset), "ADAPTQ_PARAMS", 6)]
            refs = (f".epilogue = ADAPTQ_EPILOGUE_FLOAT, .scale = scale_{tag}, .offset = offset_{tag}, "
                    f".to_int = {_to_int(ep.to_int)}")
        entries.append("    {" + ", ".join(f".{k} = {v}" for k, v in fields.items()) + ",\n     " + refs + "}")
    out.append(f"static const adaptq_output outputs_{index}[{len(entries)}] ADAPTQ_PARAMS = {{\n"
               + ",\n".join(entries) + "\n};\n")
    residual = "0"
    if op.residual:
        segs = ", ".join(f"{{{buffer_index[s.buffer]}, {s.offset}, {s.channels}}}" for s in op.residual)
        out.append(f"static const adaptq_slice residual_{index}[{len(op.residual)}] ADAPTQ_PARAMS = {{{segs}}};\n")
        residual = f"residual_{index}"
    act_lo, act_hi = op.activation if op.activation is not None else (0.0, 0.0)
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    out.append(
        f"static const adaptq_conv op_{index} ADAPTQ_PARAMS = {{\n"
        f"    .kernel = {KERNELS[kernel]}, .compute = {KINDS[op.compute]}, .weight_bits = {op.weight_bits}, "
        f".weight_grid = {'ADAPTQ_GRID_SYMMETRIC' if op.weight_grid == 'symmetric' else 'ADAPTQ_GRID_DOREFA'}, "
        f".has_activation = {int(op.activation is not None)},\n"
        f"    .kernel_h = {kh}, .kernel_w = {kw}, .stride_h = {sh}, .stride_w = {sw}, .pad_h = {ph}, .pad_w = {pw},\n"
        f"    .out_channels = {op.out_channels}, .groups = {op.groups}, "
        f".in_per_group = {op.in_channels // op.groups}, "
        f".row_elements = {gemm_row_elements(op, input_format.bits) if kernel == 'gemm' else 0},\n"
        f"    .input = {{{buffer_index[op.input.buffer]}, {op.input.offset}, {op.input.channels}}}, "
        f".weights = weights_{index},\n"
        f"    .act_lo = {_float_literal(act_lo)}, .act_hi = {_float_literal(act_hi)},\n"
        f"    .residual = {residual}, .n_residual = {len(op.residual)},\n"
        f"    .outputs = outputs_{index}, .n_outputs = {len(entries)},\n}};\n")
    return "".join(out)


def model_sources(network: IntegerNetwork) -> Dict[str, str]:
    """model.h and model.c of a validated network whose arena is planned."""
    buffer_index = {b.name: i for i, b in enumerate(network.buffers)}
    c, h, w = network.input_shape
    scratch = scratch_sizes(network)
    header = f"""/* Generated by deploy/c_export.py from an AdaptQNet integer network; do not edit. */
#ifndef ADAPTQ_MODEL_H
#define ADAPTQ_MODEL_H

#include <stdint.h>

#define ADAPTQ_INPUT_CHANNELS {c}
#define ADAPTQ_INPUT_HEIGHT {h}
#define ADAPTQ_INPUT_WIDTH {w}
#define ADAPTQ_INPUT_SIZE {c * h * w}
#define ADAPTQ_OUTPUT_SIZE {network.num_outputs}
#define ADAPTQ_ARENA_BYTES {network.arena_bytes}
#define ADAPTQ_GUARD_BYTES {GUARD_BYTES}
#define ADAPTQ_SCRATCH_COLUMNS {scratch['columns']}
#define ADAPTQ_SCRATCH_ACC {scratch['acc']}
#define ADAPTQ_SCRATCH_FLOATS {scratch['floats']}
#define ADAPTQ_SCRATCH_RESIDUAL {scratch['codes']}

/* The arena, followed by ADAPTQ_GUARD_BYTES that the kernels never touch (the harness checks them). */
extern uint8_t adaptq_arena[ADAPTQ_ARENA_BYTES + ADAPTQ_GUARD_BYTES];

/* One float32 image in (C, H, W) order -> ADAPTQ_OUTPUT_SIZE float32 outputs. Returns 0 on success. */
int adaptq_predict(const float *input, float *output);

#endif
"""
    parts = ["/* Generated by deploy/c_export.py from an AdaptQNet integer network; do not edit. */\n",
             "#include <math.h>\n#include <stdint.h>\n\n#include \"adaptq.h\"\n#include \"model.h\"\n\n"]
    buffer_rows = []
    for b in network.buffers:
        f = b.format
        buffer_rows.append(f"    {{{b.offset}, {b.num_channels}, {b.height}, {b.width}, {KINDS[f.kind]}, {f.bits}, "
                           f"{int(f.signed)}, {_float_literal(f.scale)}}}, /* {b.name}: {b.size_bytes} bytes */")
    parts.append(f"static const adaptq_buffer buffers[{len(buffer_rows)}] ADAPTQ_PARAMS = {{\n"
                 + "\n".join(buffer_rows) + "\n};\n\n")
    op_rows = []
    for index, op in enumerate(network.ops):
        if isinstance(op, Quantize):
            rows = ", ".join(f"{{{buffer_index[o.buffer]}, {network.buffer(o.buffer).channels[0]}, "
                             f"{_to_int(o.to_int)}}}" for o in op.outputs)
            parts.append(f"static const adaptq_quantize_output quantize_{index}[{len(op.outputs)}] ADAPTQ_PARAMS = "
                         f"{{{rows}}};\n")
            parts.append(f"static const adaptq_quantize op_{index} ADAPTQ_PARAMS = {{quantize_{index}, "
                         f"{len(op.outputs)}}};\n\n")
            op_rows.append(f"    {{ADAPTQ_OP_QUANTIZE, &op_{index}}}")
        elif isinstance(op, ConvPart):
            parts.append(_conv_source(index, op, buffer_index, network.buffer(op.input.buffer).format) + "\n")
            op_rows.append(f"    {{ADAPTQ_OP_CONV, &op_{index}}}")
        elif isinstance(op, GlobalAvgPool):
            parts.append(f"static const adaptq_pool op_{index} ADAPTQ_PARAMS = {{{buffer_index[op.input]}, "
                         f"{buffer_index[op.output]}}}; /* {op.name} */\n\n")
            op_rows.append(f"    {{ADAPTQ_OP_POOL, &op_{index}}}")
    parts.append(f"static const adaptq_op ops[{len(op_rows)}] ADAPTQ_PARAMS = {{\n" + ",\n".join(op_rows) + "\n};\n\n")
    parts.append(f"""static int16_t scratch_columns[ADAPTQ_SCRATCH_COLUMNS] ADAPTQ_ALIGNED(4) ADAPTQ_SECTION(".bss.adaptq.scratch");
static int32_t scratch_acc[ADAPTQ_SCRATCH_ACC] ADAPTQ_SECTION(".bss.adaptq.scratch");
static float scratch_floats[ADAPTQ_SCRATCH_FLOATS] ADAPTQ_SECTION(".bss.adaptq.scratch");
static int32_t scratch_codes[ADAPTQ_SCRATCH_RESIDUAL] ADAPTQ_SECTION(".bss.adaptq.scratch");
static float scratch_reals[ADAPTQ_SCRATCH_RESIDUAL] ADAPTQ_SECTION(".bss.adaptq.scratch");
uint8_t adaptq_arena[ADAPTQ_ARENA_BYTES + ADAPTQ_GUARD_BYTES] ADAPTQ_ALIGNED(8) ADAPTQ_SECTION(".bss.adaptq.arena");

static const adaptq_network network = {{
    buffers, ops, {len(op_rows)}, {c}, {h}, {w}, {buffer_index[network.output]},
    {{scratch_columns, scratch_acc, scratch_floats, scratch_codes, scratch_reals}},
}};

int adaptq_predict(const float *input, float *output)
{{
    return adaptq_run(&network, input, adaptq_arena, output);
}}
""")
    return {"model.h": header, "model.c": "".join(parts)}


def _uint32_words(a: np.ndarray) -> List[str]:
    return [f"0x{v:08x}u" for v in np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).reshape(-1).tolist()]


def test_data_sources(inputs: np.ndarray, labels: np.ndarray, expected: np.ndarray) -> Dict[str, str]:
    """test_data.h and test_data.c: float bit patterns (exact for every value, NaN included)."""
    n = inputs.shape[0]
    header = f"""/* Generated by deploy/c_export.py; do not edit. */
#ifndef ADAPTQ_TEST_DATA_H
#define ADAPTQ_TEST_DATA_H

#include <stdint.h>

#define ADAPTQ_TEST_COUNT {n}

extern const uint32_t adaptq_test_inputs[]; /* float32 bits, ADAPTQ_INPUT_SIZE per image */
extern const uint32_t adaptq_test_expected[]; /* the numpy reference's outputs, float32 bits */
extern const int32_t adaptq_test_labels[];

#endif
"""
    def array(ctype: str, name: str, items: List[str], per_line: int) -> str:
        return _array(ctype, name, items, "ADAPTQ_TEST_DATA", per_line).replace("static const", "const", 1)

    source = ("/* Generated by deploy/c_export.py; do not edit. */\n#include \"adaptq.h\"\n#include \"test_data.h\"\n\n"
              + array("uint32_t", "adaptq_test_inputs", _uint32_words(inputs), 12)
              + array("uint32_t", "adaptq_test_expected", _uint32_words(expected), 12)
              + array("int32_t", "adaptq_test_labels", [str(int(v)) for v in labels], 24))
    return {"test_data.h": header, "test_data.c": source}


_README = """# AdaptQNet integer network in C99

Generated by `deploy/c_export.py`; `network.json` is the integer network it was generated from.

    make run-host   # gcc build; runs the {n} test images; last line "bit-exact: K/N", exit 1 if K < N
    make run-m7     # Cortex-M7 build run on QEMU's mps2-an500 (arm-none-eabi-gcc, qemu-system-arm)
    make sizes      # model Flash (weights + parameters) and RAM (arena + scratch) of the M7 build
    make profile-m7 # instructions per op on QEMU (-icount shift=0); deploy/profile_m7.py makes it JSON

In an application: compile `adaptq.c` and `model.c` with `-std=c99 -O2 -ffp-contract=off` (no
`-ffast-math`: the outputs are bit-exact with the numpy reference only if every float operation is
rounded on its own) and call `adaptq_predict(image, logits)`. RAM: `adaptq_arena`
(ADAPTQ_ARENA_BYTES plus {guard} guard bytes only the harness uses) and the two scratch arrays.
QEMU is not cycle-accurate: measure latency on the chip.
"""


# -- the folder -------------------------------------------------------------------------------------------------
def check_replaceable(output_dir: str) -> None:
    """ValueError unless ``output_dir`` is absent or holds nothing but a previous export."""
    if not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise ValueError(f"write_c_project: {output_dir} exists and is not a folder")
    foreign = set(os.listdir(output_dir)) - EXPORT_FILES
    if foreign:
        raise ValueError(f"write_c_project: {output_dir} holds files this exporter did not write "
                         f"({', '.join(sorted(foreign)[:5])}); choose another output folder")


def write_c_project(network: IntegerNetwork, output_dir: str, test_inputs: np.ndarray, test_labels: Sequence[int],
                    expected_outputs: Optional[np.ndarray] = None) -> str:
    """Write the C folder for ``network`` with ``test_inputs`` (N, C, H, W float32) and their labels.

    ``expected_outputs`` (N, outputs) are the bytes the harness must reproduce; by default the numpy
    reference's outputs. The network is validated; its arena is planned here if it is not yet. Returns
    ``output_dir``."""
    network.validate()
    if network.arena_bytes is None:
        network = plan_arena(network)
    inputs = np.asarray(test_inputs, dtype=np.float32)
    if inputs.ndim != 4 or inputs.shape[1:] != tuple(network.input_shape) or inputs.shape[0] < 1:
        raise ValueError(f"write_c_project: test_inputs of shape {inputs.shape}, expected (N, "
                         f"{', '.join(map(str, network.input_shape))}) with N >= 1")
    labels = np.asarray(test_labels)
    if labels.shape != (inputs.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"write_c_project: test_labels must be {inputs.shape[0]} integers, got shape {labels.shape} "
                         f"of {labels.dtype}")
    expected = reference.run(network, inputs) if expected_outputs is None else np.asarray(expected_outputs)
    if expected.shape != (inputs.shape[0], network.num_outputs) or expected.dtype != np.float32:
        raise ValueError(f"write_c_project: expected_outputs must be float32 of shape "
                         f"({inputs.shape[0]}, {network.num_outputs}), got {expected.dtype} {expected.shape}")
    test_bytes = inputs.nbytes + expected.nbytes + labels.size * 4
    if test_bytes > M7_TEST_DATA_LIMIT:
        raise ValueError(f"write_c_project: {test_bytes} bytes of test vectors exceed the "
                         f"{M7_TEST_DATA_LIMIT} bytes the M7 build can hold; pass fewer images")

    output_dir = os.path.abspath(output_dir)
    check_replaceable(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        for name in KERNEL_FILES:
            shutil.copyfile(os.path.join(KERNEL_DIR, name), os.path.join(staging, name))
        files = {**model_sources(network), **test_data_sources(inputs, labels, expected),
                 **profiling.profile_sources(network),
                 "network.json": network.to_json(),
                 "README.md": _README.format(n=inputs.shape[0], guard=GUARD_BYTES)}
        for name, text in files.items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(text)
        if os.path.exists(output_dir):
            retired = staging + ".old"
            os.rename(output_dir, retired)
            os.rename(staging, output_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


# -- building, running, sizes ----------------------------------------------------------------------------------------
@dataclass
class HarnessResult:
    """One build and run: the harness's figures (None where it printed none), timings (the build,
    and the run alone), its standard output and make's/the compiler's standard error."""
    returncode: int
    bit_exact: Optional[int]
    count: Optional[int]
    correct: Optional[int]
    build_seconds: float
    run_seconds: float
    output: str
    errors: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and self.bit_exact is not None and self.bit_exact == self.count


def host_toolchain_available() -> bool:
    return shutil.which("make") is not None and shutil.which("gcc") is not None


def m7_toolchain_available() -> bool:
    return all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"))


def parse_harness_output(text: str) -> Dict[str, Optional[int]]:
    """The figures of the harness's "bit-exact: K/N" and "accuracy: X/N" lines (None if absent)."""
    exact = re.findall(r"^bit-exact: (\d+)/(\d+)\s*$", text, flags=re.M)
    accuracy = re.findall(r"^accuracy: (\d+)/(\d+)\s*$", text, flags=re.M)
    return {"bit_exact": int(exact[-1][0]) if exact else None, "count": int(exact[-1][1]) if exact else None,
            "correct": int(accuracy[-1][0]) if accuracy else None}


def run_harness(output_dir: str, target: str = "host", timeout: float = 600, jobs: int = 2) -> HarnessResult:
    """Build ``host`` or ``m7`` in an exported folder, then run its harness (``run-host`` / ``run-m7``)."""
    if target not in ("host", "m7"):
        raise ValueError(f"run_harness: target {target!r}, expected 'host' or 'm7'")
    start = time.monotonic()
    build = subprocess.run(["make", "-s", f"-j{jobs}", "-C", output_dir, target], capture_output=True, text=True,
                           timeout=timeout)
    built = time.monotonic()
    if build.returncode != 0:
        return HarnessResult(build.returncode, None, None, None, built - start, 0.0, build.stdout, build.stderr)
    run = subprocess.run(["make", "-s", "-C", output_dir, f"run-{target}"], capture_output=True, text=True,
                         timeout=timeout)
    figures = parse_harness_output(run.stdout)
    return HarnessResult(run.returncode, figures["bit_exact"], figures["count"], figures["correct"], built - start,
                         time.monotonic() - built, run.stdout, run.stderr)


SIZE_KEYS = ("model_flash_bytes", "model_weights_bytes", "model_parameters_bytes", "arena_bytes", "scratch_bytes",
             "kernels_flash_bytes")


def parse_sizes(text: str) -> Dict[str, int]:
    """The ``name: bytes`` lines of ``make sizes``; ValueError if one is missing."""
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+): (\d+)\s*$", text, flags=re.M)}
    missing = [k for k in SIZE_KEYS if k not in found]
    if missing:
        raise ValueError(f"parse_sizes: no {', '.join(missing)} in the output of make sizes")
    return {k: found[k] for k in SIZE_KEYS}


def read_sizes(output_dir: str, timeout: float = 600) -> Dict[str, int]:
    """Build the M7 objects of an exported folder and return ``parse_sizes`` of ``make sizes``."""
    result = subprocess.run(["make", "-s", "-C", output_dir, "sizes"], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ValueError(f"read_sizes: make sizes failed in {output_dir}: {result.stderr.strip()[-500:]}")
    return parse_sizes(result.stdout)
