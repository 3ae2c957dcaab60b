#!/usr/bin/env python3
"""The whole AdaptQNet pipeline on the offline default (``make demo``), into runs/demo/.

Prints every command before running it, so the output is also the tutorial; see
Search_CIFAR10/demo.py for the steps and the reasons behind the defaults.

    python Search_CIFAR10/run_demo.py            # reuse finished steps
    python Search_CIFAR10/run_demo.py --fresh    # start over
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from Search_CIFAR10.demo import DemoConfig, run_demo  # noqa: E402
from tensor_analysis.cli import DefaultsHelpFormatter, Parser, positive_int, run_cli  # noqa: E402


def main(argv=None) -> int:
    defaults = DemoConfig()
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--fresh", action="store_true",
                        help="delete the output folder first and run every step again (make demo FRESH=1)")
    parser.add_argument("--output_dir", default=defaults.output_dir, help="where every step writes")
    parser.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="steps run at once (independent steps only), each single-threaded")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="passed to the searches as --compile (default: not passed, so $ADAPTQNET_COMPILE, else "
                             "auto: torch.compile where a C compiler works)")
    args = parser.parse_args(argv)
    cfg = DemoConfig(output_dir=os.path.abspath(args.output_dir), jobs=args.jobs, compile=args.compile)
    return run_demo(cfg, fresh=args.fresh)


if __name__ == "__main__":
    run_cli(main)
