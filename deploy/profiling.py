"""Profiling an exported network on the target: what each op of ``adaptq_run`` costs, per image.

Every C export carries the op table this module generates (``profile_sources``): ``profile_ops.json``
(per op: index, name, layer, kind, compute precision, input format, MACs per image) and
``profile_ops.h`` (the op count and names for the harness). ``make profile-m7`` builds the kernels
with ``-DADAPTQ_PROFILE`` and the harness ``profile_main.c``, runs it on QEMU's mps2-an500 with
``-icount shift=0`` and prints one count per op (deploy/c/profile.h says how it counts);
``run_profile(folder)`` runs it, checks it, and joins the counts with the op table into a document of
schema ``adaptqnet/profile/1`` (docs/file_formats.md §13).

What QEMU counts is **instructions**: one per guest instruction, whatever it is (a load, a multiply, a
taken branch), at a resolution of 40 (one tick of the 25 MHz timer). It models no pipeline, caches or
Flash wait states, so instructions are not cycles; ``tensor_analysis/measured_lut.py`` turns them into
milliseconds with an assumed cycles per instruction. The board build (``make profile-m7-board``,
``-DADAPTQ_PROFILE_DWT``) counts **cycles** with the DWT, on a chip only; ``parse_profile_output``
reads what it prints.

Imports only numpy and the IR, like ``c_export`` (which calls ``profile_sources``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from deploy.ir import ConvPart, Format, GlobalAvgPool, IntegerNetwork, Quantize
from models.files import write_json_atomic

SCHEMA = "adaptqnet/profile/1"           # models.formats.PROFILE (tests check they agree)
OPS_SCHEMA = "adaptqnet/profile_ops/1"   # models.formats.PROFILE_OPS
OPS_FILE = "profile_ops.json"
OPS_HEADER = "profile_ops.h"
PROFILE_FILE = "profile.json"            # where profile_m7.py writes by default; c_export keeps it on re-export
COUNTERS = ("instructions", "cycles")
# The harness's calibration loop reads within this many timer ticks of the instructions it executes.
CALIBRATION_SLACK_TICKS = 4
DEFAULT_IMAGES = 2


# -- the op table --------------------------------------------------------------------------------------------
def format_precision(fmt: Format) -> str:
    """A buffer format as a precision name: int8 / int4 / int2 / fp16 / fp32."""
    return f"int{fmt.bits}" if fmt.is_int else fmt.kind


def format_tag(fmt: Format) -> str:
    """A buffer format with its sign: uint8, int4, fp16, ..."""
    return f"{'' if fmt.signed else 'u'}int{fmt.bits}" if fmt.is_int else fmt.kind


def conv_kind(op: ConvPart, network: IntegerNetwork) -> str:
    """dwconv / pwconv / linear / conv, as tensor_analysis names layer ops. A part of a depthwise layer
    is depthwise even when it holds one channel (groups 1, one input per output)."""
    per_group = op.in_channels // op.groups
    if per_group == 1 and op.out_channels == op.groups and op.kernel != (1, 1):
        return "dwconv"
    if op.kernel == (1, 1) and op.groups == 1:
        source = network.buffer(op.input.buffer)
        return "linear" if (source.height, source.width) == (1, 1) else "pwconv"
    return "conv"


def conv_macs(op: ConvPart, network: IntegerNetwork) -> int:
    """Multiply-accumulates of one image: outputs × (in/groups)·kh·kw (synthetic.multiply_accumulates
    sums these)."""
    out = network.buffer(op.outputs[0].buffer)
    return op.out_channels * out.height * out.width * op.reduction_size


def _joined(names: Sequence[str]) -> str:
    """One label for several values: int8, or int8+fp16 (first-seen order)."""
    return "+".join(dict.fromkeys(names))


def _pool_layer(name: str) -> str:
    """The operator a pool belongs to: build.py names pools ``pool:uint8``, the synthetic builder
    ``pool.uint8``; either way the format tag goes."""
    if ":" in name:
        return name.split(":", 1)[0]
    stem, _, tag = name.rpartition(".")
    return stem if stem and re.fullmatch(r"u?int[248]|fp16|fp32", tag) else name


def profile_table(network: IntegerNetwork) -> List[Dict[str, Any]]:
    """One row per op of ``network.ops``, in execution order: index, name, layer (the layer a conv part
    belongs to; a pool's operator; "quantize"), kind (quantize / conv / dwconv / pwconv / linear /
    pool), precision (a conv's compute: int8/int4/int2 by weight bits, fp16, fp32; other ops: the
    formats they write), input (the format read, with its sign), weight_bits, macs (per image; 0 for
    quantize and pools) and, for ops that are no layer's part, ``feeds``: the layers that read what
    they write (tensor_analysis.measured_lut charges the input's Quantize to them)."""
    readers: Dict[str, List[str]] = {}
    for op in network.ops:
        if isinstance(op, ConvPart):
            for name in op.reads():
                readers.setdefault(name, []).append(op.layer)
    rows = []
    for index, op in enumerate(network.ops):
        row: Dict[str, Any] = {"index": index, "name": op.name}
        if isinstance(op, ConvPart):
            source = network.buffer(op.input.buffer).format
            row.update(layer=op.layer, kind=conv_kind(op, network),
                       precision=f"int{op.weight_bits}" if op.compute == "int" else op.compute,
                       input=format_tag(source), weight_bits=op.weight_bits if op.compute == "int" else None,
                       macs=conv_macs(op, network))
        else:
            written = [network.buffer(b) for b in op.writes()]
            if isinstance(op, Quantize):
                row.update(layer="quantize", kind="quantize", input="fp32")
            elif isinstance(op, GlobalAvgPool):
                row.update(layer=_pool_layer(op.name), kind="pool", input=format_tag(network.buffer(op.input).format))
            row.update(precision=_joined(format_precision(b.format) for b in written), weight_bits=None, macs=0,
                       feeds=list(dict.fromkeys(layer for b in written for layer in readers.get(b.name, []))))
        rows.append(row)
    return rows


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_sources(network: IntegerNetwork) -> Dict[str, str]:
    """``profile_ops.json`` (the op table, for run_profile) and ``profile_ops.h`` (op count and names,
    for the harness) of an export."""
    table = profile_table(network)
    doc = {"schema": OPS_SCHEMA, "network": network.metadata, "ops": table}
    names = " \\\n".join(f"    {_c_string(row['name'])}," for row in table)
    header = f"""/* Generated by deploy/profiling.py; do not edit. */
#ifndef ADAPTQ_PROFILE_OPS_H
#define ADAPTQ_PROFILE_OPS_H

#define ADAPTQ_PROFILE_OPS {len(table)}
#define ADAPTQ_PROFILE_OP_NAMES {{ \\
{names} \\
}}

#endif
"""
    return {OPS_FILE: json.dumps(doc, indent=1) + "\n", OPS_HEADER: header}


def read_op_table(folder: str, where: str = "") -> Dict[str, Any]:
    """The ``profile_ops.json`` of an export folder; ValueError naming ``where`` (default: the folder) if
    it is missing or not one."""
    path = os.path.join(folder, OPS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{where or folder}: no {OPS_FILE}; it is not a C export of this version (export it again "
                         f"with deploy/export_c.py or c_export.write_c_project)")
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != OPS_SCHEMA or not isinstance(doc.get("ops"), list):
        raise ValueError(f"{path}: not an op table (expected schema {OPS_SCHEMA!r})")
    return doc


# -- the harness's output ------------------------------------------------------------------------------------
@dataclass
class HarnessProfile:
    """What the profile harness printed: counter kind and units per tick, images, the calibration loop
    (counted, instructions executed), per-op counts per image, adaptq_predict per image, bit-exact K/N."""
    counter: str
    resolution: int
    images: int
    calibration: Optional[List[int]]
    ops: Dict[int, int]
    total: int
    bit_exact: int
    count: int


def _last(pattern: str, text: str) -> Optional[re.Match]:
    found = list(re.finditer(pattern, text, flags=re.M))
    return found[-1] if found else None


def parse_profile_output(text: str, where: str = "profile harness") -> HarnessProfile:
    """Parse the harness's lines (profile_main.c); ValueError naming ``where`` if a line is missing, the
    images are not bit-exact (a profile of wrong results measures nothing) or, for instruction counts,
    the calibration loop does not read as the instructions it executes."""
    exact = _last(r"^bit-exact: (\d+)/(\d+)\s*$", text)
    counter = _last(r"^counter (\w+) (\d+)\s*$", text)
    total = _last(r"^total (\d+)\s*$", text)
    images = _last(r"^images (\d+)\s*$", text)
    if not (exact and counter and total and images):
        tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
        raise ValueError(f"{where}: no complete profile in the output (ends: {tail})")
    if counter.group(1) not in COUNTERS:
        raise ValueError(f"{where}: counter {counter.group(1)!r}, expected one of {', '.join(COUNTERS)}")
    k, n = int(exact.group(1)), int(exact.group(2))
    if k != n:
        raise ValueError(f"{where}: bit-exact {k}/{n}: the profiled code does not compute what the reference does")
    calibration = _last(r"^calibration (\d+) (\d+)\s*$", text)
    parsed = HarnessProfile(counter.group(1), int(counter.group(2)), int(images.group(1)),
                            [int(calibration.group(1)), int(calibration.group(2))] if calibration else None,
                            {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"^op (\d+) (\d+)\b", text, re.M)},
                            int(total.group(1)), k, n)
    check_calibration(parsed, where)
    if parsed.total == 0:
        raise ValueError(f"{where}: the counter never advanced (a DWT build run where there is no DWT, as on QEMU?)")
    return parsed


def check_calibration(parsed: HarnessProfile, where: str) -> None:
    """Instruction counts must read the calibration loop as what it executes, within a few ticks."""
    if parsed.counter != "instructions":
        return
    if parsed.calibration is None:
        raise ValueError(f"{where}: no calibration line")
    counted, executed = parsed.calibration
    if abs(counted - executed) > CALIBRATION_SLACK_TICKS * parsed.resolution:
        raise ValueError(f"{where}: the calibration loop of {executed} instructions counted {counted}; the timer "
                         f"does not count instructions (is QEMU run with -icount shift=0?)")


# -- the profile document ------------------------------------------------------------------------------------
def _per_mac(count: float, macs: int) -> Optional[float]:
    return count / macs if macs else None


def layer_rows(ops: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per layer (first-seen order): its parts summed; kind and precision joined if parts differ."""
    layers: Dict[str, Dict[str, Any]] = {}
    for op in ops:
        row = layers.setdefault(op["layer"], {"layer": op["layer"], "kinds": [], "precisions": [], "parts": 0,
                                              "macs": 0, "count": 0})
        row["kinds"].append(op["kind"])
        row["precisions"].append(op["precision"])
        row["parts"] += 1
        row["macs"] += op["macs"]
        row["count"] += op["count"]
    out = []
    for row in layers.values():
        out.append({"layer": row["layer"], "kind": _joined(row.pop("kinds")),
                    "precision": _joined(row.pop("precisions")), "parts": row["parts"], "macs": row["macs"],
                    "count": row["count"], "count_per_mac": _per_mac(row["count"], row["macs"])})
    return out


def profile_document(op_table: Dict[str, Any], parsed: HarnessProfile, target: str,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``adaptqnet/profile/1`` document: the op table joined with the harness's counts."""
    table = op_table["ops"]
    missing = [row["index"] for row in table if row["index"] not in parsed.ops]
    if missing or len(parsed.ops) != len(table):
        raise ValueError(f"{target}: the harness printed {len(parsed.ops)} op counts for the {len(table)} ops of "
                         f"the table (missing: {missing[:5]}); the folder's build is stale: make clean")
    ops = []
    for row in table:
        count = parsed.ops[row["index"]]
        ops.append({**row, "count": count, "count_per_mac": _per_mac(count, row["macs"])})
    macs = sum(row["macs"] for row in table)
    ops_count = sum(row["count"] for row in ops)
    network = op_table.get("network") or {}
    doc = {
        "schema": SCHEMA,
        "target": target,
        "counter": parsed.counter,
        "resolution": parsed.resolution,
        "images": parsed.images,
        "bit_exact": f"{parsed.bit_exact}/{parsed.count}",
        "calibration": None if parsed.calibration is None else {
            "counted": parsed.calibration[0], "instructions": parsed.calibration[1]},
        "model": network.get("model"),
        "network": network,
        "ops": ops,
        "layers": layer_rows(ops),
        "total": {"count": parsed.total, "ops_count": ops_count, "macs": macs,
                  "count_per_mac": _per_mac(parsed.total, macs)},
    }
    doc.update(extra or {})
    return doc


def write_json(doc: Dict[str, Any], path: str) -> None:
    """Write ``doc`` to ``path`` atomically (models.files), creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(doc, path)


# -- running it ---------------------------------------------------------------------------------------------
def qemu_toolchain_available() -> bool:
    return all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", "qemu-system-arm"))


def _make(folder: str, arguments: List[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["make", "-C", folder, *arguments], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{folder}: make {' '.join(arguments)} took more than {timeout:g} s") from None


def run_profile(folder: str, timeout: float = 600, images: int = DEFAULT_IMAGES,
                output_json: Optional[str] = None, jobs: int = 2) -> Dict[str, Any]:
    """Build and run ``make profile-m7`` in an export folder on its first ``images`` test images, check
    it (bit-exact, calibration, one count per op) and return the profile document; with
    ``output_json``, also write it there. ValueError, naming the folder, when anything fails."""
    op_table = read_op_table(folder)
    if not qemu_toolchain_available():
        raise ValueError("profiling needs make, arm-none-eabi-gcc and qemu-system-arm (apt-get install "
                         "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    if images < 1:
        raise ValueError(f"run_profile: images {images}, expected >= 1")
    variables = [f"PROFILE_IMAGES={images}"]
    start = time.monotonic()
    build = _make(folder, ["-s", f"-j{jobs}", "build/profile-m7/adaptq_profile.elf", *variables], timeout)
    built = time.monotonic()
    if build.returncode != 0:
        raise ValueError(f"{folder}: make profile-m7 failed to build: {build.stderr.strip()[-800:]}")
    run = _make(folder, ["-s", "profile-m7", *variables], timeout)
    parsed = parse_profile_output(run.stdout, f"{folder}: make profile-m7")
    if run.returncode != 0:
        raise ValueError(f"{folder}: make profile-m7 exited {run.returncode}: "
                         f"{' | '.join(run.stdout.strip().splitlines()[-4:])} {run.stderr.strip()[-300:]}")
    doc = profile_document(op_table, parsed, "qemu-mps2-an500",
                           {"seconds": {"build": round(built - start, 2),
                                        "run": round(time.monotonic() - built, 2)}})
    if output_json:
        write_json(doc, output_json)
    return doc


def profile_from_output(folder: str, text: str, where: str) -> Dict[str, Any]:
    """The profile document of a captured harness output (a board's semihosting log) for an export."""
    parsed = parse_profile_output(text, where)
    return profile_document(read_op_table(folder), parsed, "board" if parsed.counter == "cycles" else "qemu-mps2-an500")
