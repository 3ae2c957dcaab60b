"""Latency predictor: per-layer milliseconds, MMACs, RAM and Flash of a network on an MCU profile.

Give the precisions as a mapping file (mapping.json from a search, or a bare {layer: precision}
object; dual-core entries split a layer over two units) or one --precision for every layer. Prints a
per-operator table and totals (latency, peak RAM layer-wise and with in-place depthwise, Flash, each
unit's busy/idle time, and for a dual-core mapping the speed-up over the same network on the best single
unit); --output_file saves them as JSON. --lut writes the per-layer × per-precision
(× dual-core option) latency table the search consumes.

    python tensor_analysis/tensor_latency_predictor.py --model_type mobilenetv1 --width_mult 0.25 \\
        --input_size 224 --num_classes 1000 --precision int8 --hardware stm32h747 --clock_mhz 400
    python tensor_analysis/tensor_latency_predictor.py --model_type mobilenetv2 --input_size 32 \\
        --precision_mapping_file tensor_analysis/example_precision_mapping.json --lut lut.json
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models import formats  # noqa: E402
from models.files import read_json, write_json_atomic  # noqa: E402
from models.mapping import read_mapping  # noqa: E402
from models.precisions import PRECISION_ORDER, get_precision  # noqa: E402
from tensor_analysis.analysis_file import load_analysis_json  # noqa: E402
from tensor_analysis.cli import (Parser, add_model_args, add_overwrite_arg, check_outputs, json_kind, positive_mhz,  # noqa: E402
                                 precision_list, run_cli, spec_from_args)
from tensor_analysis.dual import DEFAULT_SPLITS, parse_splits  # noqa: E402
from tensor_analysis.graph import analyze_network, as_analysis  # noqa: E402
from tensor_analysis.lut import build_lut  # noqa: E402
from tensor_analysis.prediction import dual_speedup, predict_network  # noqa: E402
from tensor_analysis.profiles import list_profiles, load_profile  # noqa: E402
from tensor_analysis.reports import prediction_report  # noqa: E402

PREDICTION_OUTPUT = json_kind(formats.PREDICTION, "a prediction (tensor_latency_predictor.py --output_file)")
LUT_OUTPUT = json_kind(formats.LUT, "a latency table (tensor_latency_predictor.py --lut)")


def build_parser():
    p = Parser(description=__doc__)
    add_model_args(p, required=False)
    p.add_argument("--analysis", default=None,
                   help="take the model from an analysis.json instead of --model_type (the mapping file's "
                        "'model' is used when neither is given)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--precision_mapping_file", default=None,
                   help="mapping.json or {layer: precision}; every layer must be named")
    g.add_argument("--precision", default=None, help="one precision for every layer (default int8)")
    h = p.add_argument_group("hardware")
    h.add_argument("--hardware", default="stm32h747",
                   help=f"profile name ({', '.join(list_profiles())}) or a profile .json path (default stm32h747)")
    h.add_argument("--clock_mhz", type=positive_mhz, default=None,
                   help="the first unit's clock in MHz (default: the profile's); other units keep their ratio")
    h.add_argument("--unit", default=None, help="run single-precision layers on this unit (default: the first)")
    o = p.add_argument_group("output")
    o.add_argument("--output_file", default=None, help="write the prediction (per operator + totals) as JSON")
    o.add_argument("--lut", default=None, help="write the latency table (lut.json) for the search")
    o.add_argument("--lut_precisions", type=precision_list, default=list(PRECISION_ORDER),
                   help="precisions in the table (default all five)")
    o.add_argument("--no_dual", action="store_true",
                   help="leave dual-core options out of the table (included when the profile has two units)")
    o.add_argument("--splits", type=parse_splits, default=list(DEFAULT_SPLITS),
                   help="dual-core split ratios for the table (default 0.25,0.5,0.75,balanced)")
    o.add_argument("--quiet", action="store_true", help="print the totals only")
    add_overwrite_arg(o)
    return p


def input_flags(args):
    """The files a prediction reads, for check_outputs."""
    return [("--analysis", args.analysis), ("--precision_mapping_file", args.precision_mapping_file),
            ("--hardware", args.hardware)]


def resolve(args):
    """(analysis, layers mapping) from the flags."""
    file_spec, layers = None, None
    if args.precision_mapping_file:
        file_spec, layers = read_mapping(read_json(args.precision_mapping_file, "precision mapping file"),
                                         args.precision_mapping_file)
    if args.analysis:
        analysis = as_analysis(load_analysis_json(args.analysis))
    elif args.model_type:
        analysis = analyze_network(spec_from_args(args))
    elif file_spec:
        analysis = analyze_network(file_spec)
    else:
        raise ValueError("no model: give --model_type, --analysis, or a mapping file that records its 'model'")
    if layers is None:
        precision = args.precision or "int8"
        get_precision(precision, "--precision")
        layers = {n: precision for n in analysis.layer_names}
    else:
        # a mapping names layers, and layer names do not depend on the input size or width: it applies to
        # any network with the same layers (and, for dual-core splits, the same channel counts)
        where = args.precision_mapping_file
        if file_spec and file_spec.get("type") not in (None, analysis.spec.get("type")):
            where += f" (a mapping for {file_spec.get('type')})"
        analysis.check_mapping(layers, where=where)
    return analysis, layers


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_outputs([("--output_file", args.output_file, PREDICTION_OUTPUT), ("--lut", args.lut, LUT_OUTPUT)],
                  input_flags(args), args.overwrite)
    profile = load_profile(args.hardware)
    if args.unit is not None:
        profile.unit(args.unit)
    analysis, layers = resolve(args)
    result = predict_network(analysis, layers, profile, args.clock_mhz, args.unit)
    report = prediction_report(result)
    print(report if not args.quiet else report[report.index("latency:"):])
    if any(len(parts) > 1 or parts[0].unit is not None for parts in analysis.check_mapping(layers).values()):
        # a dual-core mapping: what the second unit buys over the same network on one unit
        result["dual_speedup"] = dual_speedup(analysis, layers, profile, args.clock_mhz)
        s = result["dual_speedup"]
        print(f"dual-core speed-up: {s['speedup']:.3f}x over the same network on {s['best_single_unit']} alone ("
              + ", ".join(f"{u} {ms:.2f} ms" for u, ms in s["single_unit_ms"].items()) + ")")
    if args.output_file:
        write_json_atomic({"schema": formats.PREDICTION, "mapping": layers, **result}, args.output_file, compact=True)
        print(f"wrote {args.output_file}")
    if args.lut:
        lut = build_lut(analysis, profile, args.clock_mhz, dual=bool(profile.dual) and not args.no_dual,
                        precisions=args.lut_precisions, splits=args.splits)
        write_json_atomic(lut, args.lut, compact=True)
        print(f"wrote {args.lut}")
    return 0


if __name__ == "__main__":
    run_cli(main)
