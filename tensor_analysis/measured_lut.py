"""Measured latencies for the search: profiles of exported networks (deploy/profile_m7.py,
``adaptqnet/profile/1``) → the ``lut.json`` that ``--latency_lut`` reads (docs/file_formats.md §4, §13).

A profile counts, per op of one exported network, instructions (QEMU, ``-icount shift=0``) or cycles
(a chip's DWT) per image. Each layer whose parts all run at one precision gives that layer's entry at
that precision; several profiles of the same network at other precisions (a uniform-INT8 and a
uniform-INT4 export, ...) fill other entries. The network input's Quantize op is charged to the layers
that read it (their precision is the format it writes); a pool replaces the base table's fixed
operator of its name. Every entry no profile measures comes from the base table: a given lut.json or
the hardware profile's prediction (``lut.build_lut``); the output's ``measured`` section lists what was
measured and from which profile. Two profiles measuring the same entry are averaged.

Milliseconds: ``cycles / (clock_mhz · 1000)``, with ``cycles = instructions · cycles_per_instruction``
for instruction counts; QEMU models no pipeline, caches or wait states, so that factor is an
assumption the output records, not a measurement.

Reads profiles as plain JSON: tensor_analysis never imports deploy.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models import formats
from models.files import read_json
from models.precisions import PRECISION_ORDER, get_precision

from .lut import validate_lut
from .profiles import _number, load_profile

COUNTERS = ("instructions", "cycles")
DEFAULT_CLOCK_MHZ = 480.0           # STM32H747's Cortex-M7, the project's default profile
# The Cortex-M7 cycles per QEMU instruction the kernels' own profile assumes (docs/hardware.md §4.7):
# one assumption for the predicted and the measured tables.
KERNEL_PROFILE = "adaptq_m7"


def default_cycles_per_instruction() -> float:
    return float(load_profile(KERNEL_PROFILE).raw["cycles_per_instruction"])


def validate_profile(doc: Any, where: str) -> Dict[str, Any]:
    """The fields of a profile this module reads, checked; ValueError naming ``where``."""
    formats.check_schema(doc, formats.PROFILE, where, "profile")
    if doc.get("counter") not in COUNTERS:
        raise ValueError(f"{where}: counter {doc.get('counter')!r}, expected one of {', '.join(COUNTERS)}")
    ops = doc.get("ops")
    if not isinstance(ops, list) or not ops:
        raise ValueError(f"{where}: 'ops' must be a non-empty list")
    for i, op in enumerate(ops):
        at = f"{where}: ops[{i}]"
        if not isinstance(op, Mapping) or not all(isinstance(op.get(k), str) for k in ("name", "layer", "kind",
                                                                                        "precision")):
            raise ValueError(f"{at}: expected an object with name, layer, kind, precision, macs and count")
        _number(op.get("macs"), f"{at}.macs")
        _number(op.get("count"), f"{at}.count")
    return dict(doc)


def load_profile_json(path: str) -> Dict[str, Any]:
    return validate_profile(read_json(path, "profile"), path)


def cycles_to_ms(cycles: float, clock_mhz: float) -> float:
    return cycles / (clock_mhz * 1e3)


def count_to_ms(count: float, counter: str, clock_mhz: float, cycles_per_instruction: float) -> float:
    """Milliseconds of ``count`` instructions (at ``cycles_per_instruction``) or cycles."""
    return cycles_to_ms(count * cycles_per_instruction if counter == "instructions" else count, clock_mhz)


def layer_counts(doc: Mapping[str, Any]) -> Tuple[Dict[str, Tuple[str, float, int]], Dict[str, float], List[str]]:
    """What one profile measures: ({layer: (precision, count per image, MACs)}, {fixed op: count},
    layers left out because their parts run at several precisions)."""
    parts: Dict[str, List[Mapping[str, Any]]] = {}
    fed: List[Tuple[List[str], float]] = []
    fixed: Dict[str, float] = {}
    for op in doc["ops"]:
        if op["kind"] == "quantize":
            fed.append((list(op.get("feeds") or []), float(op["count"])))
        elif op["kind"] == "pool":
            fixed[op["layer"]] = fixed.get(op["layer"], 0.0) + float(op["count"])
        else:
            parts.setdefault(op["layer"], []).append(op)
    layers, mixed = {}, []
    for name, ops in parts.items():
        precisions = {op["precision"] for op in ops}
        if len(precisions) > 1:
            mixed.append(name)
            continue
        layers[name] = (precisions.pop(), sum(float(op["count"]) for op in ops), sum(int(op["macs"]) for op in ops))
    for readers, count in fed:
        readers = [r for r in readers if r in layers]
        for r in readers:  # the input's conversion costs what the reading layers' precision makes it cost
            precision, total, macs = layers[r]
            layers[r] = (precision, total + count / len(readers), macs)
    return layers, fixed, mixed


def _check_layers(measured: Mapping[str, Tuple[str, float, int]], base: Mapping[str, Any], where: str,
                  macs: Optional[Mapping[str, int]]) -> None:
    unknown = [n for n in measured if n not in base["layers"]]
    if unknown:
        raise ValueError(f"{where}: layers {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not in "
                         f"the base table ({len(base['layers'])} layers, e.g. {next(iter(base['layers']))}); the "
                         f"profile is of another network")
    for name, (precision, _, layer_macs) in measured.items():
        get_precision(precision, f"{where}: layer {name}")
        if macs is not None and name in macs and macs[name] != layer_macs:
            raise ValueError(f"{where}: layer {name} has {layer_macs} MACs, the table's model {macs[name]}; the "
                             f"profile is of another network (width, input size, classes)")


def measured_lut(profiles: Sequence[Tuple[str, Mapping[str, Any]]], base: Mapping[str, Any], base_source: str,
                 clock_mhz: float = DEFAULT_CLOCK_MHZ, cycles_per_instruction: Optional[float] = None,
                 layer_macs: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """The base table with every entry the ``profiles`` ((where, document) pairs) measure replaced by
    its milliseconds, and a ``measured`` section saying which and from where. ``cycles_per_instruction``
    (default 1.0) converts instruction counts and is refused for cycle counts; ``layer_macs`` ({layer:
    MACs} of the table's model) checks that each profile is of that network."""
    if not profiles:
        raise ValueError("no profile given")
    counters = {doc["counter"] for _, doc in profiles}
    if len(counters) > 1:
        raise ValueError("the profiles count both instructions (QEMU) and cycles (a chip); convert one kind at a time")
    counter = counters.pop()
    if counter == "cycles" and cycles_per_instruction is not None:
        raise ValueError("--cycles_per_instruction converts instruction counts (QEMU); these profiles count cycles")
    cpi = default_cycles_per_instruction() if cycles_per_instruction is None else float(cycles_per_instruction)
    _number(clock_mhz, "clock_mhz", positive=True)
    _number(cpi, "cycles_per_instruction", positive=True)

    entries: Dict[Tuple[str, str], List[Tuple[int, float]]] = {}
    fixed: Dict[str, List[Tuple[int, float]]] = {}
    skipped: Dict[str, List[str]] = {}
    for i, (where, doc) in enumerate(profiles):
        layers, fixed_ops, mixed = layer_counts(doc)
        _check_layers(layers, base, where, layer_macs)
        for name, (precision, count, _) in layers.items():
            entries.setdefault((name, precision), []).append((i, count))
        for name, count in fixed_ops.items():
            fixed.setdefault(name, []).append((i, count))
        if mixed:
            skipped[where] = mixed

    def mean(values: List[Tuple[int, float]]) -> float:
        return sum(c for _, c in values) / len(values)

    lut = {k: v for k, v in base.items() if k != "measured"}
    lut["layers"] = {name: dict(row) for name, row in base["layers"].items()}
    record_layers: Dict[str, Dict[str, Any]] = {}
    for (name, precision), values in entries.items():
        count = mean(values)
        ms = count_to_ms(count, counter, clock_mhz, cpi)
        lut["layers"][name][precision] = ms
        record_layers.setdefault(name, {})[precision] = {"count": count, "ms": ms,
                                                         "profiles": [i for i, _ in values]}
    record_fixed = {}
    base_fixed = base.get("fixed_ops")
    if isinstance(base_fixed, Mapping):
        lut["fixed_ops"] = dict(base_fixed)
        for name, values in fixed.items():
            if name in base_fixed:  # a pool of another name is no operator of the table's model
                count = mean(values)
                lut["fixed_ops"][name] = count_to_ms(count, counter, clock_mhz, cpi)
                record_fixed[name] = {"count": count, "ms": lut["fixed_ops"][name],
                                      "profiles": [i for i, _ in values]}
        lut["fixed_ms"] = sum(lut["fixed_ops"].values())
    present = set(base.get("precisions", [])) | {p for _, p in entries}
    lut["precisions"] = [p for p in PRECISION_ORDER if p in present]
    total_entries = sum(len(row) for row in lut["layers"].values())
    lut["measured"] = {
        "counter": counter,
        "cycles_per_instruction": cpi if counter == "instructions" else None,
        "clock_mhz": clock_mhz,
        "base": base_source,
        "profiles": [{"file": where, "target": doc.get("target"), "images": doc.get("images"),
                      "total": (doc.get("total") or {}).get("count")} for where, doc in profiles],
        "layers": record_layers,
        "fixed_ops": record_fixed,
        "entries": {"measured": len(entries), "from_base": total_entries - len(entries)},
        "skipped_layers": skipped,
    }
    if "dual" in lut:
        lut["measured"]["dual"] = "from the base table (profiles run every layer on one core)"
    return validate_lut(lut, "measured latency table")
