"""Fit the hardware profile of this project's own C kernels (tensor_analysis/hardware/adaptq_m7.json) to
instruction counts measured on QEMU (docs/hardware.md §4.7).

    python benchmarks/m7_kernels.py --precisions int8 int4 int2 mixed fp16 fp32 --work_dir /tmp/cost_k --overwrite
    python benchmarks/fit_kernel_profile.py --work_dir /tmp/cost_k --output_profile tensor_analysis/hardware/adaptq_m7.json

Every conv part of every profiled export (``<work_dir>/<precision>/{network.json,profile.json}``, and any
``--extra_dir`` export) becomes one measured record: its shape, compute precision, the formats its
outputs are written in, whether it fuses a residual add, and its instruction count per image. The
latency model's terms for each record (tensor_analysis.latency.layer_terms) form a non-negative least
squares, each row divided by its measured count (so every layer weighs by its relative error). Unknowns
are tied where the C is one kernel: conv, pwconv and linear share the GEMM terms per precision (their
staging cost differs: the stem's im2col reads codes one by one, a pointwise layer over 8-bit codes reads
pixels in place), depthwise has its own, the epilogue per output format is shared by every kernel of
one compute class (int / float). Instructions become cycles by ``--cycles_per_instruction`` (an
assumption until a board measures DWT cycles, docs/hardware.md §4.7).

Prints, per layer kind x precision, measured vs predicted instructions and the worst per-layer error,
then the network totals; ``--check_only`` refits nothing and checks an existing profile instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from models.files import write_json_atomic  # noqa: E402
from models.precisions import PRECISION_ORDER  # noqa: E402
from tensor_analysis.graph import Operator  # noqa: E402
from tensor_analysis.latency import layer_cycles, layer_terms  # noqa: E402
from tensor_analysis.profiles import LAYER_OPS, Unit, load_profile, parse_profile  # noqa: E402

MEASUREMENTS_SCHEMA = "adaptqnet/kernel_measurements/1"
NETWORKS = ("int8", "int4", "int2", "mixed", "fp16", "fp32")
INT = ("int8", "int4", "int2")
GEMM = ("conv", "pwconv", "linear")
LANES = {"fp32": 1, "fp16": 1, "int8": 4, "int4": 8, "int2": 16}  # codes per 32-bit word
DEFAULT_CPI = 0.8
DEFAULT_CLOCK = 480.0


class BadInput(ValueError):
    pass


# -- measured records -------------------------------------------------------------------------------------
def _format_name(fmt) -> str:
    return f"int{fmt.element_bits}" if fmt.is_int else fmt.kind


def records_from_export(folder: str, network: str) -> List[dict]:
    """One record per conv part of the export in ``folder`` (network.json + profile.json)."""
    from deploy.ir import ConvPart, IntegerNetwork
    for f in ("network.json", "profile.json"):
        if not os.path.isfile(os.path.join(folder, f)):
            raise BadInput(f"{folder}: no {f} (run benchmarks/m7_kernels.py --work_dir first)")
    net = IntegerNetwork.load(os.path.join(folder, "network.json"))
    with open(os.path.join(folder, "profile.json")) as f:
        prof = json.load(f)
    if prof.get("schema") != "adaptqnet/profile/1" or not isinstance(prof.get("ops"), list):
        raise BadInput(f"{folder}/profile.json: not an adaptqnet/profile/1 file")
    if prof.get("counter") != "instructions":
        raise BadInput(f"{folder}/profile.json: counts {prof.get('counter')!r}, not QEMU instructions")
    if len(prof["ops"]) != len(net.ops):
        raise BadInput(f"{folder}: profile.json has {len(prof['ops'])} ops, network.json {len(net.ops)}")
    bufs = net.buffer_map
    out = []
    for op, po in zip(net.ops, prof["ops"]):
        if not isinstance(op, ConvPart):
            continue
        if po.get("name") != op.name:
            raise BadInput(f"{folder}: op {po.get('name')!r} of profile.json is {op.name!r} in network.json")
        b = bufs[op.input.buffer]
        oh, ow = op.output_size(b.height, b.width)
        out.append({"network": network, "name": op.name, "layer": op.layer, "kind": po["kind"],
                    "precision": po["precision"], "in_channels": op.in_channels, "out_channels": op.out_channels,
                    "in_hw": [b.height, b.width], "out_hw": [oh, ow], "kernel": list(op.kernel),
                    "stride": list(op.stride), "groups": op.groups, "macs": int(po["macs"]),
                    "outputs": [_format_name(bufs[o.buffer].format) for o in op.outputs],
                    "residual": len(op.residual) > 0, "instructions": int(po["count"])})
    return out


def collect(work_dir: Optional[str], networks: Sequence[str], extra_dirs: Sequence[str]) -> List[dict]:
    records = []
    if work_dir:
        if not os.path.isdir(work_dir):
            raise BadInput(f"--work_dir {work_dir}: no such folder")
        found = [n for n in networks if os.path.isdir(os.path.join(work_dir, n))]
        if not found:
            raise BadInput(f"--work_dir {work_dir}: none of {', '.join(networks)} profiled there")
        for n in found:
            records += records_from_export(os.path.join(work_dir, n), n)
    for d in extra_dirs:
        records += records_from_export(d, "extra:" + os.path.basename(os.path.normpath(d)))
    if not records:
        raise BadInput("no measured layers")
    return records


def operator(r: dict) -> Operator:
    """The record as the latency model sees a layer (one part = one layer of its channels)."""
    kind = r["kind"]
    if kind not in LAYER_OPS:
        raise BadInput(f"record {r.get('name')!r}: unknown kind {kind!r}")
    cin, (h, w), cout, (oh, ow) = r["in_channels"], r["in_hw"], r["out_channels"], r["out_hw"]
    return Operator(index=-1, name=r["name"], op=kind, is_layer=True, inputs=[], output=-1,
                    in_shape=(cin, h, w) if kind != "linear" else (cin * h * w, 1, 1),
                    out_shape=(cout, oh, ow), macs=int(r["macs"]), kernel=tuple(r["kernel"]),
                    stride=tuple(r["stride"]), groups=int(r["groups"]), fused=["add"] if r["residual"] else [])


# -- the least squares ------------------------------------------------------------------------------------
def _template_unit() -> Unit:
    """A unit with every term switched on, so layer_terms lists them all."""
    ones = {p: 1.0 for p in PRECISION_ORDER}
    per_op = {op: {"overhead_cycles": dict(ones), "cycles_per_output": dict(ones)} for op in LAYER_OPS}
    per_op["dwconv"]["cycles_per_remainder_mac"] = dict(ones)
    return Unit(name="m7", core="Cortex-M7", clock_mhz=DEFAULT_CLOCK, native=(), overhead_cycles=0.0,
                cycles_per_mac={op: dict(ones) for op in LAYER_OPS}, cycles_per_output=dict(ones),
                cycles_per_im2col=dict(ones), simd_lanes=dict(LANES), elementwise_cycles={},
                per_op=per_op, epilogue_cycles={p: dict(ones) for p in PRECISION_ORDER},
                fused_add_cycles=dict(ones))


def _klass(p: str) -> str:
    return "int" if p in INT else "float"


def parameter(kind: str, p: str, term: str) -> Optional[Tuple[str, ...]]:
    """The unknown a (kind, precision, term) quantity multiplies; None: not a cost of these kernels."""
    if term.startswith("epilogue:"):
        return ("epilogue", _klass(p), term.split(":", 1)[1])
    if term == "fused_add":
        return ("fused_add", p)
    if kind in GEMM:
        if term == "cycles_per_im2col":
            return ("im2col", "conv" if kind == "conv" else "pwconv+linear", p)
        if term in ("overhead_cycles", "cycles_per_mac", "cycles_per_output", "cycles_per_position"):
            return ("gemm", p, term)
        return None
    if term == "cycles_per_im2col":
        return None
    if term in ("cycles_per_remainder_mac", "cycles_per_weight") and p not in INT:
        return None
    return ("dwconv", p, term)


def design(records: Sequence[dict]) -> Tuple[np.ndarray, List[Tuple[str, ...]]]:
    unit = _template_unit()
    rows, params = [], {}
    for r in records:
        terms = layer_terms(operator(r), r["precision"], unit, 1.0, r["outputs"])
        row = {}
        for term, n in terms.items():
            if term.startswith("_") or n == 0:
                continue
            key = parameter(r["kind"], r["precision"], term)
            if key is not None:
                row[key] = row.get(key, 0.0) + float(n)
                params.setdefault(key, len(params))
        rows.append(row)
    keys = sorted(params, key=str)
    index = {k: i for i, k in enumerate(keys)}
    X = np.zeros((len(records), len(keys)))
    for i, row in enumerate(rows):
        for k, n in row.items():
            X[i, index[k]] = n
    return X, keys


def fit(records: Sequence[dict], cpi: float) -> Dict[Tuple[str, ...], float]:
    from scipy.optimize import nnls
    X, keys = design(records)
    y = np.array([r["instructions"] for r in records], float) * cpi
    w = 1.0 / y
    coef, _ = nnls(X * w[:, None], y * w, maxiter=50 * X.shape[1])
    return {k: float(c) for k, c in zip(keys, coef)}


# -- the profile ------------------------------------------------------------------------------------------
def _r(x: float) -> float:
    return float(f"{x:.6g}")


def build_profile(coef: Dict[Tuple[str, ...], float], records: Sequence[dict], cpi: float, pool: Dict[str, float],
                  command: str) -> dict:
    g = lambda *k: _r(coef.get(tuple(k), 0.0))  # noqa: E731
    cpm, per_op = {}, {}
    for op in LAYER_OPS:
        src = "dwconv" if op == "dwconv" else "gemm"
        if src == "gemm":
            cpm[op] = {p: g("gemm", p, "cycles_per_mac") for p in PRECISION_ORDER}
            per_op[op] = {t: {p: g("gemm", p, t) for p in PRECISION_ORDER}
                          for t in ("overhead_cycles", "cycles_per_output", "cycles_per_position")}
            per_op[op]["cycles_per_im2col"] = {p: g("im2col", "conv" if op == "conv" else "pwconv+linear", p)
                                               for p in PRECISION_ORDER}
        else:
            cpm[op] = {p: g("dwconv", p, "cycles_per_mac") for p in PRECISION_ORDER}
            per_op[op] = {t: {p: g("dwconv", p, t) for p in PRECISION_ORDER}
                          for t in ("overhead_cycles", "cycles_per_output", "cycles_per_position",
                                    "cycles_per_border_output", "cycles_per_weight", "cycles_per_remainder_mac")}
            per_op[op]["cycles_per_im2col"] = {p: 0.0 for p in PRECISION_ORDER}
    epilogue = {p: {f: g("epilogue", _klass(p), f) for f in PRECISION_ORDER} for p in PRECISION_ORDER}
    fused_add = {p: g("fused_add", p) for p in PRECISION_ORDER}
    pool_cycles = _r(pool.get("pool", 0.0) * cpi)
    add_elem = _r(max(fused_add.values()))
    networks = sorted({r["network"] for r in records})
    fitted = (f"[M/E] least squares on the QEMU instruction counts of {len(records)} conv parts "
              f"(networks {', '.join(networks)}; benchmarks/fit_kernel_profile.py), times the assumed "
              f"cycles_per_instruction")
    sources = {
        "ram_kb": "as stm32h747: docs/hardware.md §5.4, STM32H745/747/755 ITCM 64 + DTCM 128 + AXI SRAM 512 + "
                  "SRAM1/2/3 128/128/32 + SRAM4 64 KB = 1056 KB (ST AN5557) [D]",
        "largest_ram_block_kb": "as stm32h747: AXI SRAM 512 KB (ST AN5557) [D]",
        "flash_kb": "as stm32h747: 2 MB flash in 2 banks (ST AN5557) [D]",
        "cycles_per_instruction": "[E] assumed cycles per QEMU-counted instruction on the Cortex-M7 (six-stage in-order dual-issue, "
                                  "at most 2 instructions per cycle: AnandTech's Cortex-M7 launch article, "
                                  "systemonchips.com Cortex-M7 MIPS note); Arm's CoreMark/MHz 5.01 (Cortex-M7) vs 3.40 (Cortex-M4, single-issue, same "
                                  "Thumb-2 code) as commonly quoted, not re-checked here, is 1.47x more work per cycle; with the M4 at about 1.1-1.2 "
                                  "cycles per instruction (loads and taken branches take 2+) the M7 runs about "
                                  "0.75-0.8; 0.8 chosen (docs/hardware.md §4.7). An assumption until a board "
                                  "measures DWT cycles (make profile-m7-board)",
        "units.m7.clock_mhz": "as stm32h747's M7: 480 MHz (ST AN5557) [D]",
        "units.m7.overhead_cycles": "[E] 0: every layer kind has its fitted per_op overhead; non-layer ops "
                                    "(pool) are costed per element",
        "units.m7.cycles_per_mac": fitted,
        "units.m7.per_op": fitted + "; conv, pwconv and linear share the GEMM kernel's terms per precision "
                                    "(cycles_per_im2col: conv alone, pwconv and linear together)",
        "units.m7.epilogue_cycles": fitted + "; one row per compute class (int8/int4/int2 share, fp16/fp32 share)",
        "units.m7.fused_add_cycles": fitted,
        "units.m7.cycles_per_output": "[E] unit-wide default, unused (per_op sets every layer kind): the pwconv row",
        "units.m7.cycles_per_im2col": "[E] unit-wide default, unused (per_op sets every layer kind): the pwconv row",
        "units.m7.simd_lanes": "[D] codes per 32-bit word the kernels read at once (deploy/c/adaptq_conv_int.c: "
                               "GEMM rows padded to whole words; adaptq_dwconv_int.c: depthwise blocks of 32/bits "
                               "channels, the rest one by one); floats scalar",
        "units.m7.elementwise_cycles.pool": "[M/E] the global average pool's QEMU instructions per input element "
                                            "(mean over the profiled networks), times cycles_per_instruction",
        "units.m7.elementwise_cycles": "[E] add/mul/concat/other not measured (the networks fuse every add): "
                                       "the largest fitted fused_add_cycles; concat and other as pool",
        "units.m7.activation_cycles": "[E] not measured (the benchmark networks use ReLU6 only, free in the "
                                      "requantisation's clamp): as stm32h747's M7",
    }
    h747 = load_profile("stm32h747").raw["units"]["m7"]
    return {
        "schema": "adaptqnet/hardware/1",
        "name": "adaptq_m7",
        "label": "STM32H747 Cortex-M7 @480 MHz running this project's own C kernels (deploy/c), fitted to QEMU "
                 "instruction counts",
        "description": "The kernels of deploy/c (int GEMM, int depthwise, float) on the STM32H747's M7, fitted by "
                       f"`{command}` to instruction counts measured with QEMU -icount shift=0; cycles = "
                       f"{cpi} x instructions (assumed, see sources.cycles_per_instruction). Regenerate after "
                       "any kernel change: benchmarks/m7_kernels.py then benchmarks/fit_kernel_profile.py.",
        "cycles_per_instruction": cpi,
        "ram_kb": 1056, "largest_ram_block_kb": 512, "flash_kb": 2048,
        "units": {"m7": {
            "core": "Cortex-M7", "clock_mhz": DEFAULT_CLOCK, "native": ["fp32", "int8"],
            "emulated": {"fp16": "storage only: widened with vcvtb, float32 arithmetic",
                         "int4": "unpacked to int16 lanes (AND + SXTB16), SMLAD",
                         "int2": "unpacked to int16 lanes (AND + SXTB16), SMLAD"},
            "overhead_cycles": 0,
            "cycles_per_mac": cpm,
            "cycles_per_output": dict(per_op["pwconv"]["cycles_per_output"]),
            "cycles_per_im2col": dict(per_op["pwconv"]["cycles_per_im2col"]),
            "simd_lanes": dict(LANES),
            "elementwise_cycles": {"add": add_elem, "mul": add_elem, "pool": pool_cycles, "concat": pool_cycles,
                                   "other": pool_cycles},
            "activation_cycles": h747["activation_cycles"],
            "per_op": per_op,
            "epilogue_cycles": epilogue,
            "fused_add_cycles": fused_add,
        }},
        "sources": sources,
    }


def pool_costs(work_dir: Optional[str], networks: Sequence[str]) -> Dict[str, float]:
    """Instructions per input element of the global average pool, mean over the profiled networks."""
    if not work_dir:
        return {}
    from deploy.ir import GlobalAvgPool, IntegerNetwork
    per = []
    for n in networks:
        folder = os.path.join(work_dir, n)
        if not os.path.isfile(os.path.join(folder, "profile.json")):
            continue
        net = IntegerNetwork.load(os.path.join(folder, "network.json"))
        with open(os.path.join(folder, "profile.json")) as f:
            ops = json.load(f)["ops"]
        for op, po in zip(net.ops, ops):
            if isinstance(op, GlobalAvgPool):
                per.append(po["count"] / net.buffer_map[op.input].elements)
    return {"pool": float(np.mean(per))} if per else {}


# -- the report -------------------------------------------------------------------------------------------
def predict(records: Sequence[dict], profile) -> List[float]:
    """Predicted QEMU instructions of each record: the profile's cycles / its cycles_per_instruction."""
    prof = load_profile(profile)
    cpi = float(prof.raw.get("cycles_per_instruction", 1.0))
    unit = prof.unit(None)
    return [layer_cycles(operator(r), r["precision"], unit, 1.0, r["outputs"]) / cpi for r in records]


def report(records: Sequence[dict], predicted: Sequence[float], out=sys.stdout) -> Dict[str, float]:
    """Per kind x precision and per network; returns the worst |error| per kind x precision."""
    groups = defaultdict(list)
    for r, p in zip(records, predicted):
        groups[(r["kind"], r["precision"])].append((r, p))
    print(f"{'kind':8s} {'prec':5s} {'parts':>5s} {'measured':>13s} {'predicted':>13s} {'error':>7s} "
          f"{'worst part':>10s}  worst at", file=out)
    worst = {}
    for key in sorted(groups, key=lambda k: (LAYER_OPS.index(k[0]), PRECISION_ORDER.index(k[1]))):
        rows = groups[key]
        m = sum(r["instructions"] for r, _ in rows)
        p = sum(q for _, q in rows)
        errs = [(q - r["instructions"]) / r["instructions"] for r, q in rows]
        i = int(np.argmax(np.abs(errs)))
        worst[f"{key[0]}.{key[1]}"] = abs(errs[i])
        print(f"{key[0]:8s} {key[1]:5s} {len(rows):5d} {m:13,d} {p:13,.0f} {100 * (p - m) / m:+6.1f}% "
              f"{100 * errs[i]:+9.1f}%  {rows[i][0]['network']}:{rows[i][0]['name']}", file=out)
    nets = defaultdict(lambda: [0, 0.0])
    for r, p in zip(records, predicted):
        nets[r["network"]][0] += r["instructions"]
        nets[r["network"]][1] += p
    print(f"\n{'network (conv parts)':24s} {'measured':>13s} {'predicted':>13s} {'error':>7s}", file=out)
    for n, (m, p) in nets.items():
        print(f"{n:24s} {m:13,d} {p:13,.0f} {100 * (p - m) / m:+6.1f}%", file=out)
    return worst


def load_measurements(path: str) -> Tuple[List[dict], Dict[str, float]]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"--measurements {path}: cannot read ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != MEASUREMENTS_SCHEMA or not isinstance(doc.get("records"), list):
        raise BadInput(f"--measurements {path}: not a {MEASUREMENTS_SCHEMA} file")
    for r in doc["records"]:
        if not isinstance(r, dict) or not isinstance(r.get("instructions"), int) or r["instructions"] <= 0:
            raise BadInput(f"--measurements {path}: record {r.get('name') if isinstance(r, dict) else r!r} "
                           f"has no positive instruction count")
    return doc["records"], dict(doc.get("pool", {}))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--work_dir", help="benchmarks/m7_kernels.py --work_dir: <precision>/network.json + profile.json")
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), help="subfolders of --work_dir to read")
    ap.add_argument("--extra_dir", nargs="*", default=[], help="more profiled exports (network.json + profile.json), "
                    "e.g. one-layer kernel_case_network exports")
    ap.add_argument("--measurements", help="read the measured records from this JSON instead of exports")
    ap.add_argument("--save_measurements", help="write the measured records (a fixture for the tests) here")
    ap.add_argument("--output_profile", help="write the fitted profile here (atomically)")
    ap.add_argument("--check_only", help="fit nothing: report this profile's predictions against the measurements")
    ap.add_argument("--cycles_per_instruction", type=float, default=DEFAULT_CPI,
                    help="assumed Cortex-M7 cycles per QEMU instruction (docs/hardware.md §4.7)")
    ap.add_argument("--max_error", type=float, default=None,
                    help="exit 1 if any part's |predicted - measured| / measured exceeds this (e.g. 0.10)")
    args = ap.parse_args(argv)
    try:
        if not (args.cycles_per_instruction > 0) or not np.isfinite(args.cycles_per_instruction):
            raise BadInput(f"--cycles_per_instruction must be > 0, got {args.cycles_per_instruction}")
        if bool(args.measurements) == bool(args.work_dir or args.extra_dir):
            raise BadInput("give either --work_dir / --extra_dir (profiled exports) or --measurements (a JSON)")
        if not args.check_only and not args.output_profile and not args.save_measurements:
            raise BadInput("nothing to do: give --output_profile, --save_measurements or --check_only")
        bad = [n for n in args.networks if n not in NETWORKS]
        if bad:
            raise BadInput(f"--networks: unknown {', '.join(bad)}; expected some of {', '.join(NETWORKS)}")
        if args.measurements:
            records, pool = load_measurements(args.measurements)
        else:
            records = collect(args.work_dir, args.networks, args.extra_dir)
            pool = pool_costs(args.work_dir, args.networks)
        if args.save_measurements:
            write_json_atomic({"schema": MEASUREMENTS_SCHEMA, "pool": pool, "records": records}, args.save_measurements)
        if args.check_only:
            profile = load_profile(args.check_only)
        elif args.output_profile:
            command = "python benchmarks/fit_kernel_profile.py " + " ".join(
                a if not os.path.isabs(a) else os.path.basename(a) for a in (argv if argv is not None else sys.argv[1:]))
            doc = build_profile(fit(records, args.cycles_per_instruction), records, args.cycles_per_instruction,
                                pool, command)
            profile = parse_profile(doc, args.output_profile)  # refuse to write what would not load
            write_json_atomic(doc, args.output_profile)
            profile = load_profile(args.output_profile)
        else:
            return 0
        worst = report(records, predict(records, profile))
    except (BadInput, ValueError, FileNotFoundError) as e:
        print(f"fit_kernel_profile.py: {e}", file=sys.stderr)
        return 2
    if args.max_error is not None and max(worst.values()) > args.max_error:
        print(f"worst part error {100 * max(worst.values()):.1f}% > {100 * args.max_error:.1f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
