#!/usr/bin/env python3
"""Measured latency table: profiles of exported networks → the lut.json the search reads (--latency_lut).

    python deploy/profile_m7.py --export_dir out/int8_c --output_json out/int8.json
    python deploy/profile_m7.py --export_dir out/int4_c --output_json out/int4.json
    python tensor_analysis/profile_to_lut.py --profile out/int8.json --profile out/int4.json \\
        --base_lut runs/dnas/RUN/lut.json --output_lut measured_lut.json

Each profile (deploy/profile_m7.py, one exported network) gives the entries of its layers at the
precisions they ran at; several profiles of one network at different precisions fill several entries
per layer. Entries no profile measures come from --base_lut, or else from the --hardware profile's
prediction for the model (--analysis, or the model the profiles record). The output records which
entries were measured, by which profile, and the conversion used (the "measured" section,
docs/file_formats.md §4). QEMU profiles count instructions: milliseconds = instructions ×
--cycles_per_instruction / --clock_mhz, an assumption (QEMU models no pipeline, caches or Flash wait
states); a chip's profile counts cycles and takes no such factor.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models import formats  # noqa: E402
from models.files import write_json_atomic  # noqa: E402
from tensor_analysis.analysis_file import load_analysis_json  # noqa: E402
from tensor_analysis.cli import (Parser, add_overwrite_arg, check_outputs, json_kind, positive_float,  # noqa: E402
                                 positive_mhz, run_cli)
from tensor_analysis.graph import analyze_network, as_analysis  # noqa: E402
from tensor_analysis.lut import build_lut, load_lut_json  # noqa: E402
from tensor_analysis.measured_lut import DEFAULT_CLOCK_MHZ, load_profile_json, measured_lut  # noqa: E402
from tensor_analysis.profiles import list_profiles, load_profile  # noqa: E402

LUT_OUTPUT = json_kind(formats.LUT, "a latency table (lut.json)")


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--profile", action="append", required=True, metavar="FILE",
                   help="a profile JSON from deploy/profile_m7.py (repeatable: one per exported precision)")
    p.add_argument("--output_lut", required=True, help="the latency table to write (lut.json)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--base_lut", default=None,
                      help="lut.json giving every entry no profile measures (its layers must include the profiles')")
    base.add_argument("--analysis", default=None,
                      help="analysis.json of the model, whose unmeasured entries --hardware predicts (default: the "
                           "model the profiles record)")
    p.add_argument("--hardware", default="stm32h747",
                   help=f"profile predicting the unmeasured entries without --base_lut ({', '.join(list_profiles())} "
                        f"or a .json path; default stm32h747)")
    p.add_argument("--clock_mhz", type=positive_mhz, default=None,
                   help=f"core clock the counts run at (default: the base table's clock of its unit, "
                        f"{DEFAULT_CLOCK_MHZ:g} MHz on stm32h747; {DEFAULT_CLOCK_MHZ:g} if it names none)")
    p.add_argument("--cycles_per_instruction", type=positive_float, default=None,
                   help="cycles per QEMU-counted instruction (default: the adaptq_m7 profile's assumption, 0.8 "
                        "[E], docs/hardware.md §4.7: a Cortex-M7 issues up to 2 per cycle but stalls on loads and "
                        "branches); refused for profiles that count cycles")
    add_overwrite_arg(p)
    return p


def base_clock(lut) -> float:
    clocks = lut.get("clock_mhz")
    if isinstance(clocks, dict) and isinstance(clocks.get(lut.get("unit")), (int, float)):
        return float(clocks[lut["unit"]])
    return DEFAULT_CLOCK_MHZ


def predicted_base(args, profiles):
    """(the table predicted for the model, where it came from, the model's analysis)."""
    if args.analysis:
        analysis = as_analysis(load_analysis_json(args.analysis))
        source = args.analysis
    else:
        specs = [doc.get("model") for _, doc in profiles if doc.get("model")]
        if not specs:
            raise ValueError(f"--profile {profiles[0][0]}: records no model spec; give --base_lut or --analysis")
        analysis = analyze_network(specs[0])
        source = f"the model of {profiles[0][0]}"
    profile = load_profile(args.hardware)
    lut = build_lut(analysis, profile, clock_mhz=args.clock_mhz)
    return lut, f"predicted by {profile.name} for {source}", analysis


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    inputs = [("--profile", path) for path in args.profile] + [("--base_lut", args.base_lut),
                                                               ("--analysis", args.analysis)]
    check_outputs([("--output_lut", args.output_lut, LUT_OUTPUT)], inputs, args.overwrite)
    profiles = [(path, load_profile_json(path)) for path in args.profile]
    if args.base_lut:
        base, source = load_lut_json(args.base_lut), args.base_lut
        analysis = analyze_network(base["model"]) if isinstance(base.get("model"), dict) else None
    else:
        base, source, analysis = predicted_base(args, profiles)
    macs = None if analysis is None else {op.name: op.macs for op in analysis.layers}
    clock = args.clock_mhz or base_clock(base)
    lut = measured_lut(profiles, base, source, clock, args.cycles_per_instruction, macs)
    write_json_atomic(lut, args.output_lut, compact=True)
    m = lut["measured"]
    print(f"{m['entries']['measured']} entries measured ({m['counter']}"
          + (f" x {m['cycles_per_instruction']:g} cycles per instruction" if m["cycles_per_instruction"] else "")
          + f" at {clock:g} MHz), {m['entries']['from_base']} from {source}")
    partly = [n for n, row in lut["layers"].items() if n in m["layers"] and len(m["layers"][n]) < len(row)]
    if partly:  # the search would trade measured kernels against another library's predicted ones
        print(f"note: {len(partly)} layers mix measured and base entries (e.g. {partly[0]}); profile every "
              f"precision the search may choose to compare like with like")
    for where, layers in m["skipped_layers"].items():
        print(f"{where}: {len(layers)} layers split over several precisions left to the base table "
              f"({', '.join(layers[:3])}{' ...' if len(layers) > 3 else ''})")
    print(f"wrote {args.output_lut}")
    return 0


if __name__ == "__main__":
    run_cli(main)
