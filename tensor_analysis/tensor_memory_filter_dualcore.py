"""Dual-core memory filter: the memory filter plus, per layer, the ways to split it over two units.

Each option splits a layer's output channels between the hardware profile's two processing units
(e.g. STM32H747's M7 and M4), each at its own precision, at the ratios of --splits (fraction of the
channels on the first unit) or 'balanced' (ratio equalising the two units' times on this profile),
or runs the whole layer on the second unit. For each option: the bytes each unit reads and writes,
the bytes alive in total, whether that fits --memory_threshold, and its latency. Writes
analysis_dual.json: analysis.json plus per-layer dual_options / allowed_dual_options.

    python tensor_analysis/tensor_memory_filter_dualcore.py --model_type mobilenetv2 \\
        --memory_threshold 512 --input_size 32 --hardware stm32h747
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models.files import write_json_atomic  # noqa: E402
from tensor_analysis.analysis_file import analysis_document  # noqa: E402
from tensor_analysis.cli import analysis_from_args, check_outputs, kb_tag, model_tag, positive_mhz, run_cli, spec_from_args  # noqa: E402
from tensor_analysis.dual import DEFAULT_SPLITS, dual_analysis_json, parse_splits  # noqa: E402
from tensor_analysis.profiles import list_profiles, load_profile  # noqa: E402
from tensor_analysis.reports import dual_report  # noqa: E402
from tensor_analysis.tensor_memory_filter import ANALYSIS_OUTPUT  # noqa: E402
from tensor_analysis.tensor_memory_filter import build_parser as single_parser  # noqa: E402


def build_parser():
    p = single_parser(__doc__)
    g = p.add_argument_group("dual-core")
    g.add_argument("--hardware", default="stm32h747",
                   help=f"profile with two units ({', '.join(list_profiles())}; or a profile .json path); "
                        f"default stm32h747")
    g.add_argument("--splits", type=parse_splits, default=list(DEFAULT_SPLITS),
                   help="comma-separated fractions of output channels on the first unit, and/or 'balanced' "
                        "(default 0.25,0.5,0.75,balanced)")
    g.add_argument("--clock_mhz", type=positive_mhz, default=None,
                   help="the first unit's clock (the second keeps its ratio); used by 'balanced' and ms")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    profile = load_profile(args.hardware)
    profile.dual_units  # fails early with the list of dual-core profiles
    out = args.output_file or (f"{model_tag(spec_from_args(args))}_{kb_tag(args.memory_threshold)}"
                               f"_dual_{profile.name}.json")
    check_outputs([("--output_file", out, ANALYSIS_OUTPUT)], [("--hardware", args.hardware)], args.overwrite)
    analysis = analysis_from_args(args)
    d = dual_analysis_json(analysis, profile, args.memory_threshold, args.precisions, args.splits,
                           args.inplace_depthwise, args.clock_mhz)
    if args.allow_infeasible:
        fallback = analysis_document(analysis, args.memory_threshold, args.precisions, args.inplace_depthwise, True)
        for entry, fb in zip(d["layers"], fallback["layers"]):
            if fb.get("infeasible"):
                entry["allowed_precisions"], entry["infeasible"] = fb["allowed_precisions"], True
        d["allow_infeasible"] = True
    report = dual_report(d)
    print(report if not args.quiet else report[report.index("dual-core options:"):])
    stuck = [i for i in d["infeasible"]
             if i["name"] not in {l["name"] for l in d["layers"] if l["allowed_dual_options"]}]
    if stuck and not args.allow_infeasible:
        names = ", ".join(f"{i['name']} ({i['min_live_kb']:.1f} KB at {i['at']})" for i in stuck)
        raise ValueError(f"--memory_threshold {args.memory_threshold:g} KB: {len(stuck)} operator(s) fit at no "
                         f"precision on one core nor split: {names}; raise the threshold or pass "
                         f"--allow_infeasible (nothing written)")
    write_json_atomic(d, out, compact=True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
