"""Whole-network prediction under a mapping: per-operator milliseconds, MMACs, live RAM and Flash, and
totals (latency, peak RAM both ways, Flash, fit against the profile, each unit's busy time); the
dual-core speed-up over the same network on one unit."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from models.mapping import Part, dual_option_key

from .flash import flash_by_operator
from .graph import as_analysis
from .latency import fixed_operator_ms, layer_cycles, parts_latency
from .memory import mapping_live_bytes
from .profiles import load_profile


def predict_network(analysis, mapping: Mapping[str, Any], profile, clock_mhz: Optional[float] = None,
                    unit: Optional[str] = None) -> Dict[str, Any]:
    """Per-layer ms, MMACs, live RAM and Flash under ``mapping``, and totals (latency, peak RAM both
    ways, Flash, fit against the profile's RAM/Flash, each unit's busy and idle time).

    Single-precision entries run on ``unit`` (default: the primary unit); dual-core entries name theirs.
    """
    a = as_analysis(analysis)
    prof = load_profile(profile)
    run_on = prof.unit(unit).name
    parts_of = a.check_mapping(mapping)
    for name, parts in parts_of.items():
        for p in parts:
            if p.unit is not None:
                prof.unit(p.unit)
    live = dict((op.name, b) for op, b in mapping_live_bytes(a, mapping))
    flash_of = flash_by_operator(a, mapping)
    live_inplace = dict((op.name, b) for op, b in mapping_live_bytes(a, mapping, inplace_depthwise=True))
    busy_total = {n: 0.0 for n in prof.units}
    rows, total = [], 0.0
    for op in a.operators:
        if op.is_layer:
            given = parts_of[op.name]
            parts = [Part(p.unit if p.unit is not None else run_on, p.precision, p.c0, p.c1) for p in given]
            if len(given) == 1 and given[0].unit is None:
                # a plain precision: the whole network runs on one unit, no hand-over
                u = prof.unit(run_on)
                ms = layer_cycles(op, parts[0].precision, u) / (prof.clocks(clock_mhz)[run_on] * 1e3)
                busy = {run_on: ms}
            else:
                ms, busy = parts_latency(a, op, parts, prof, clock_mhz)
            label = parts[0].precision if len(parts) == 1 else dual_option_key(parts)
            where = parts[0].unit if len(parts) == 1 else "+".join(p.unit for p in parts)
        else:
            ms = fixed_operator_ms(op, prof, clock_mhz, run_on)
            busy = {run_on: ms}
            label, where = "-", run_on
        for k, v in busy.items():
            busy_total[k] += v
        total += ms
        rows.append({"name": op.name, "op": op.op, "layer": op.is_layer, "precision": label, "unit": where,
                     "out_shape": list(op.out_shape), "macs": op.macs, "mmacs": op.macs / 1e6, "ms": ms,
                     "units_ms": busy, "live_bytes": live[op.name], "live_bytes_inplace": live_inplace[op.name],
                     "flash_bytes": flash_of[op.name]})
    peak = max(live.values())
    peak_in = max(live_inplace.values())
    flash_total = sum(r["flash_bytes"] for r in rows)
    ram_limit = prof.ram_kb * 1024 if prof.ram_kb else None
    flash_limit = prof.flash_kb * 1024 if prof.flash_kb else None
    layers_ms = sum(r["ms"] for r in rows if r["layer"])
    return {
        "hardware": prof.name, "label": prof.label, "model": a.spec, "clock_mhz": prof.clocks(clock_mhz),
        "operators": rows,
        "totals": {
            "latency_ms": total, "layers_ms": layers_ms, "fixed_ms": total - layers_ms,
            "macs": a.macs, "mmacs": a.macs / 1e6,
            "peak_ram_bytes": peak, "peak_ram_bytes_inplace": peak_in, "flash_bytes": flash_total,
            "ram_limit_bytes": ram_limit, "flash_limit_bytes": flash_limit,
            "fits_ram": None if ram_limit is None else peak <= ram_limit,
            "fits_flash": None if flash_limit is None else flash_total <= flash_limit,
            "units": {n: {"busy_ms": b, "idle_ms": max(0.0, total - b),
                          "utilization": b / total if total else 0.0} for n, b in busy_total.items()},
        },
    }


def single_unit_latency_ms(analysis, mapping: Mapping[str, Any], profile, unit: Optional[str] = None,
                           clock_mhz: Optional[float] = None) -> float:
    """Latency of ``mapping``'s network run entirely on ``unit``: every layer whole there, each run of
    neighbouring channels at one precision one kernel call (a layer split into int8 and int4 parts is
    two calls), no hand-over; the other operators on ``unit`` too. The arithmetic is the dual-core
    network's, so this is the single-unit network of equal accuracy."""
    a = as_analysis(analysis)
    prof = load_profile(profile)
    u = prof.unit(unit)
    clock = prof.clocks(clock_mhz)[u.name]
    parts_of = a.check_mapping(mapping)
    total = 0.0
    for op in a.operators:
        if not op.is_layer:
            total += fixed_operator_ms(op, prof, clock_mhz, u.name)
            continue
        runs: List[List[Any]] = []
        for p in parts_of[op.name]:
            if runs and runs[-1][0] == p.precision:
                runs[-1][1] += p.c1 - p.c0
            else:
                runs.append([p.precision, p.c1 - p.c0])
        total += sum(layer_cycles(op, prec, u, n / op.out_channels) for prec, n in runs) / (clock * 1e3)
    return total


def dual_speedup(analysis, mapping: Mapping[str, Any], profile, clock_mhz: Optional[float] = None) -> Dict[str, Any]:
    """Speed-up of a dual-core mapping over the best single-unit run of the same network
    (single_unit_latency_ms on each unit of the profile's dual pair)."""
    prof = load_profile(profile)
    dual_ms = predict_network(analysis, mapping, prof, clock_mhz)["totals"]["latency_ms"]
    units = prof.dual_units if prof.dual else (prof.primary,)
    single = {u: single_unit_latency_ms(analysis, mapping, prof, u, clock_mhz) for u in units}
    best = min(single, key=single.get)
    return {"latency_ms": dual_ms, "single_unit_ms": single, "best_single_unit": best,
            "speedup": single[best] / dual_ms if dual_ms else None}
