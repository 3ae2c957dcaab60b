"""The command-line flags both search stages share (schedule, hardware objective, fine-tuning, run), and
the precision constraints (--int_only, --protect) that narrow each layer's allowed precisions."""
from __future__ import annotations

import argparse
import fnmatch
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from models.layers import ALPHA_INITS
from models.precisions import INT_PRECISIONS, PRECISION_ORDER, PRECISIONS
from Search_CIFAR10.dnas.search import TEMP_SCHEDULES
from tensor_analysis.cli import non_negative_float, non_negative_int, positive_float, positive_int


def add_search_args(parser: argparse.ArgumentParser, stage: int = 1) -> None:
    """Argument groups shared by stage 1 and stage 2 (data and runtime groups come from their modules)."""
    g = parser.add_argument_group("search schedule")
    g.add_argument("--epochs", type=positive_int, default=10, help="search epochs (default %(default)s)")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=1,
                   help="first epochs train the shared weights only, α frozen (default %(default)s)")
    g.add_argument("--batch_size", type=positive_int, default=64, help="batch size of both splits (default %(default)s)")
    g.add_argument("--temp_schedule", choices=TEMP_SCHEDULES, default="exponential",
                   help="temperature annealing per epoch (default %(default)s)")
    # stage 1 anneals from 1 to 0.1, stage 2 keeps the seed's 5 → 0.5: docs/experiments.md §2-3
    temps = (1.0, 0.1) if stage == 1 else (5.0, 0.5)
    g.add_argument("--temp_start", type=positive_float, default=temps[0],
                   help="temperature at the first epoch; π = softmax(α / T) (default %(default)s)")
    g.add_argument("--temp_end", type=positive_float, default=temps[1],
                   help="temperature at the last epoch; low enough that π ends nearly one-hot, so the supernet "
                        "is close to the network derived from it (default %(default)s)")
    g.add_argument("--gumbel", action="store_true", help="sample π with Gumbel-softmax during training steps")
    if stage == 1:  # stage 2's α is over dual-core options, and its mixture is always exact
        g.add_argument("--alpha_init", choices=ALPHA_INITS, default="int8_biased",
                       help="initial logits: the seed's int8-biased values or uniform (default %(default)s)")
        g.add_argument("--search_mode", choices=("composite", "exact"), default="composite",
                       help="composite: mix quantized weights and inputs, one conv per layer (fast); "
                            "exact: one conv per precision (for checking) (default %(default)s)")
    g.add_argument("--lr_weights", type=positive_float, default=0.01, help="weight learning rate (default %(default)s)")
    g.add_argument("--weight_optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="optimizer of the weights (SGD with momentum 0.9, cosine schedule) (default %(default)s)")
    g.add_argument("--weight_decay", type=non_negative_float, default=4e-5,
                   help="weight decay of conv/linear weights (not BN, bias, clips) (default %(default)s)")
    # Adam moves each logit by about lr per step whatever the gradient's size, so lr × (α steps) bounds
    # how far α can leave its initial values (docs/experiments.md §2)
    g.add_argument("--lr_alpha", type=positive_float, default=0.05,
                   help="α learning rate (Adam: roughly the most a logit moves per step) (default %(default)s)")
    g.add_argument("--alpha_optimizer", choices=("adam", "sgd"), default="adam", help="optimizer of α (default %(default)s)")
    g.add_argument("--alpha_weight_decay", type=non_negative_float, default=1e-3, help="α weight decay (default %(default)s)")
    g.add_argument("--grad_clip", type=non_negative_float, default=5.0,
                   help="clip the weights' gradient norm; 0 disables (default %(default)s)")
    if stage == 1:
        g.add_argument("--progressive", type=non_negative_int, nargs="?", const=-1, default=0, metavar="EPOCHS",
                       help="progressive precision reduction: lower bits unlock over the first EPOCHS search "
                            "epochs (FP16 → INT8 → INT4 → INT2); without a value, half the search epochs")
    g.add_argument("--protect", action="append", default=None, metavar="PATTERN=MIN",
                   help="critical-layer protection: layers matched by PATTERN keep at least precision MIN "
                        "(a layer-name glob like 'features.0.*', an op kind conv|dwconv|pwconv|linear, "
                        "'first' or 'last'); repeatable, e.g. --protect first=int8 --protect dwconv=int8")

    h = parser.add_argument_group("hardware objective")
    h.add_argument("--hardware_weight", type=non_negative_float, default=0.5,
                   help="λ: weight of the hardware term relative to cross-entropy (0 = accuracy only) "
                        "(default %(default)s)")
    h.add_argument("--latency_target_ms", type=positive_float, default=None,
                   help="predicted-latency target; only latency above it is penalised (default: none, "
                        "then all latency is penalised relative to the all-INT8 network)")
    h.add_argument("--memory_budget_kb", type=positive_float, default=None,
                   help="peak-RAM budget in KB; only the excess is penalised (default: none; the memory "
                        "filter has already removed options that overflow the analysis threshold)")
    h.add_argument("--allow_unmet_budgets", action="store_true",
                   help="search even when no network of the allowed precisions meets --memory_budget_kb or "
                        "--latency_target_ms (refused otherwise, before any training); the result then misses it, "
                        "and the run says so at the end and in summary.json")

    g.add_argument("--selection_fraction", type=non_negative_float, default=0.0,
                   help="hold this share of the validation images out of the α steps; supernet, derived and "
                        "fine-tuned networks are then chosen on them alone (0: the α images also choose, which "
                        "makes validation accuracy optimistic); recorded in split.json")

    f = parser.add_argument_group("derivation and fine-tuning")
    f.add_argument("--finetune_epochs", type=non_negative_int, default=5,
                   help="QAT fine-tuning epochs of the derived network (default %(default)s)")
    f.add_argument("--keep_dominated", action="store_true",
                   help="keep a derived layer at a precision that another of its options beats on both bits and "
                        "latency (by default it takes the fastest such option that keeps the RAM budget; the "
                        "changes are in summary.json 'dominated_replaced')")
    f.add_argument("--finetune_lr", type=positive_float, default=0.005, help="fine-tuning learning rate (default %(default)s)")

    r = parser.add_argument_group("run")
    r.add_argument("--output_dir", default=None, help="run directory (default: runs/dnas/<name>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --output_dir from its checkpoint_last.pt, with its saved arguments")
    r.add_argument("--overwrite", action="store_true",
                   help="start a new run in --output_dir even if it holds files (a finished run's are replaced; "
                        "a folder holding one of the run's inputs is refused all the same)")
    r.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)")
    r.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                   help="fuse the element-wise precision mixture with torch.compile: auto (where a C "
                        "compiler works; the first steps then pay a one-time compilation), on, off "
                        "(default: $ADAPTQNET_COMPILE, else auto)")


def parse_protect(rules: Optional[Sequence[str]]) -> List[Tuple[str, str]]:
    if rules is None:
        return []
    parsed = []
    for rule in rules:
        if "=" not in rule:
            raise ValueError(f"--protect: expected PATTERN=MIN (e.g. dwconv=int8), got {rule!r}")
        pattern, minimum = rule.split("=", 1)
        if minimum not in PRECISIONS:
            raise ValueError(f"--protect {rule}: unknown precision {minimum!r}; expected one of {', '.join(PRECISION_ORDER)}")
        parsed.append((pattern, minimum))
    return parsed


def apply_constraints(allowed: Dict[str, List[str]], op_kinds: Mapping[str, str], int_only: bool,
                      protect: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """Allowed precisions per layer after --int_only and --protect (removed options do not exist in α)."""
    names = list(allowed)
    out = {}
    for i, name in enumerate(names):
        options = list(allowed[name])
        if int_only:
            kept = [p for p in options if p in INT_PRECISIONS]
            if not kept:
                raise ValueError(f"--int_only: layer {name} allows no integer precision ({', '.join(options)})")
            options = kept
        for pattern, minimum in protect:
            hit = ((pattern == "first" and i == 0) or (pattern == "last" and i == len(names) - 1)
                   or pattern == op_kinds.get(name) or fnmatch.fnmatchcase(name, pattern))
            if hit:
                kept = [p for p in options if PRECISIONS[p].bits >= PRECISIONS[minimum].bits]
                if not kept:
                    warnings.warn(f"--protect {pattern}={minimum}: layer {name} allows only "
                                  f"{', '.join(options)}; keeping its highest, {options[0]}")
                    kept = options[:1]
                options = kept
        out[name] = options
    return out


