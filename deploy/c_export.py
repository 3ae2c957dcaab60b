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
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from deploy import profiling, reference
from deploy.arena import plan_arena
from deploy.ir import (ConvPart, FixedPointEpilogue, FloatToInt, GlobalAvgPool, IntegerNetwork, Quantize,
                       float_to_half_bits, pack_bits)

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")
KERNEL_FILES = ("adaptq.h", "adaptq.c", "main.c", "startup_m7.c", "mps2_an500.ld", "Makefile", "profile.h",
                "profile.c", "profile_main.c")
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
def scratch_words(network: IntegerNetwork) -> Dict[str, int]:
    """Words of int and float scratch the kernels need (see run_conv in adaptq.c)."""
    int_words, float_words = 1, 1
    for op in network.ops:
        if not isinstance(op, ConvPart):
            continue
        k, out = op.reduction_size, op.out_channels
        residual = 1 if op.residual else 0
        if op.compute == "int":
            int_words = max(int_words, k + out * (1 + residual))
            float_words = max(float_words, out * residual)
        else:
            float_words = max(float_words, k + out * (1 + residual))
    return {"int": int_words, "float": float_words}


def _weights_source(index: int, op: ConvPart) -> str:
    name = f"weights_{index}"
    if op.compute == "int":
        packed = pack_bits(op.weights, op.weight_bits, op.weight_grid == "symmetric")
        return _array("uint8_t", name, (str(v) for v in packed.tolist()), "ADAPTQ_WEIGHTS", 24)
    if op.compute == "fp16":
        bits = float_to_half_bits(op.weights.astype(np.float32)).reshape(-1)
        return _array("uint16_t", name, (str(v) for v in bits.tolist()), "ADAPTQ_WEIGHTS", 16)
    return _array("float", name, _floats(op.weights), "ADAPTQ_WEIGHTS", 6)


def _conv_source(index: int, op: ConvPart, buffer_index: Dict[str, int]) -> str:
    out = [f"/* {op.name}: layer {op.layer!r} channels {list(op.layer_channels)}, {op.compute}"
           + (f" w{op.weight_bits} {op.weight_grid}" if op.compute == "int" else "") + " */\n",
           _weights_source(index, op)]
    entries = []
    for j, o in enumerate(op.outputs):
        ep, tag = o.epilogue, f"{index}_{j}"
        fields = {"buffer": buffer_index[o.buffer], "channel_offset": o.channel_offset,
                  "first": o.part_channels[0], "count": o.part_channels[1] - o.part_channels[0]}
        if isinstance(ep, FixedPointEpilogue):
            out += [_array("int32_t", f"multiplier_{tag}", _ints(ep.multiplier), "ADAPTQ_PARAMS", 8),
                    _array("uint8_t", f"shift_{tag}", _ints(ep.shift), "ADAPTQ_PARAMS", 24),
                    _array("int64_t", f"bias_{tag}", _ints(ep.bias, 64), "ADAPTQ_PARAMS", 4),
                    _array("int16_t", f"lo_{tag}", _ints(ep.lo), "ADAPTQ_PARAMS", 16),
                    _array("int16_t", f"hi_{tag}", _ints(ep.hi), "ADAPTQ_PARAMS", 16)]
            refs = (f".epilogue = ADAPTQ_EPILOGUE_FIXED, .multiplier = multiplier_{tag}, .shift = shift_{tag}, "
                    f".bias = bias_{tag}, .lo = lo_{tag}, .hi = hi_{tag}")
            if ep.residual_multiplier is not None:
                out.append(_array("int64_t", f"residual_multiplier_{tag}", _ints(ep.residual_multiplier, 64),
                                  "ADAPTQ_PARAMS", 4))
                refs += f", .residual_multiplier = residual_multiplier_{tag}"
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
        f"    .compute = {KINDS[op.compute]}, .weight_bits = {op.weight_bits}, "
        f".weight_grid = {'ADAPTQ_GRID_SYMMETRIC' if op.weight_grid == 'symmetric' else 'ADAPTQ_GRID_DOREFA'}, "
        f".has_activation = {int(op.activation is not None)},\n"
        f"    .kernel_h = {kh}, .kernel_w = {kw}, .stride_h = {sh}, .stride_w = {sw}, .pad_h = {ph}, .pad_w = {pw},\n"
        f"    .out_channels = {op.out_channels}, .groups = {op.groups}, "
        f".in_per_group = {op.in_channels // op.groups},\n"
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
    scratch = scratch_words(network)
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
#define ADAPTQ_INT_SCRATCH_WORDS {scratch['int']}
#define ADAPTQ_FLOAT_SCRATCH_WORDS {scratch['float']}

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
            parts.append(_conv_source(index, op, buffer_index) + "\n")
            op_rows.append(f"    {{ADAPTQ_OP_CONV, &op_{index}}}")
        elif isinstance(op, GlobalAvgPool):
            parts.append(f"static const adaptq_pool op_{index} ADAPTQ_PARAMS = {{{buffer_index[op.input]}, "
                         f"{buffer_index[op.output]}}}; /* {op.name} */\n\n")
            op_rows.append(f"    {{ADAPTQ_OP_POOL, &op_{index}}}")
    parts.append(f"static const adaptq_op ops[{len(op_rows)}] ADAPTQ_PARAMS = {{\n" + ",\n".join(op_rows) + "\n};\n\n")
    parts.append(f"""static int32_t int_scratch[ADAPTQ_INT_SCRATCH_WORDS] ADAPTQ_SECTION(".bss.adaptq.scratch");
static float float_scratch[ADAPTQ_FLOAT_SCRATCH_WORDS] ADAPTQ_SECTION(".bss.adaptq.scratch");
uint8_t adaptq_arena[ADAPTQ_ARENA_BYTES + ADAPTQ_GUARD_BYTES] ADAPTQ_ALIGNED(8) ADAPTQ_SECTION(".bss.adaptq.arena");

static const adaptq_network network = {{
    buffers, ops, {len(op_rows)}, {c}, {h}, {w}, {buffer_index[network.output]}, int_scratch, float_scratch,
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
