"""One table of many runs: every ``summary.json`` under a folder, as aligned text, CSV or Markdown.

Runs are read with ``runs.read_run``: a missing value shows as "-" instead of hiding the run, and a file
that is not a JSON object is reported by path and skipped, so one broken run does not hide the rest of
a batch.

summary.json fields used (written by the stage-1 search):
``args.{dataset, input_size, hardware_weight, int_only}`` (or the run's ``args.json`` when the summary
has no ``args``), ``accuracy.{test, finetuned_val, derived_val_before_finetune, supernet_val}``,
``hardware.{profile, latency_ms, peak_ram_kb, flash_kb, compression}``, ``time_s.{search, finetune}``.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models.files import write_text_atomic

from .runs import Run, RunReadError, find_summaries, number, read_run, section

MISSING = "-"

# (key, header): the table's columns, in order
COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("run", "run"),
    ("dataset", "dataset"),
    ("profile", "profile"),
    ("input_size", "size"),
    ("hardware_weight", "λ"),
    ("int_only", "int_only"),
    ("test_acc", "test acc"),
    ("val_acc", "val acc"),
    ("latency_ms", "latency ms"),
    ("peak_ram_kb", "peak RAM KB"),
    ("flash_kb", "Flash KB"),
    ("compression", "compression"),
    ("search_time_s", "search time"),
    ("finetune_time_s", "finetune time"),
)
TEXT_COLUMNS = ("run", "dataset", "profile", "int_only")

# The validation accuracy that speaks for a run: the fine-tuned network's, else the latest stage reached.
VAL_ACCURACY_KEYS = ("finetuned_val", "derived_val_before_finetune", "supernet_val")


def _flag(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int):
        return bool(value)
    return None


def _text(value: Any) -> Optional[str]:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) else None


def summary_row(summary: Mapping, run: str, args: Optional[Mapping] = None) -> Dict[str, Any]:
    """The table row of one summary.json object: raw values, None where a key is missing."""
    if not isinstance(summary, Mapping):
        raise ValueError(f"expected a JSON object, got {type(summary).__name__}")
    run_args = section(summary, "args") or (args if isinstance(args, Mapping) else {})
    accuracy = section(summary, "accuracy")
    hardware = section(summary, "hardware")
    times = section(summary, "time_s")
    model = section(summary, "model")
    val = next((v for v in (number(accuracy.get(k)) for k in VAL_ACCURACY_KEYS) if v is not None), None)
    input_size = number(run_args.get("input_size"))
    if input_size is None:
        input_size = number(model.get("input_size"))
    return {
        "run": run,
        "dataset": _text(run_args.get("dataset")),
        "profile": _text(hardware.get("profile")) or _text(run_args.get("hardware")),
        "input_size": input_size,
        "hardware_weight": number(run_args.get("hardware_weight")),
        "int_only": _flag(run_args.get("int_only")),
        "test_acc": number(accuracy.get("test")),
        "val_acc": val,
        "latency_ms": number(hardware.get("latency_ms")),
        "peak_ram_kb": number(hardware.get("peak_ram_kb")),
        "flash_kb": number(hardware.get("flash_kb")),
        "compression": number(hardware.get("compression")),
        "search_time_s": number(times.get("search")),
        "finetune_time_s": number(times.get("finetune")),
    }


def table_row(run: Run, root: str) -> Dict[str, Any]:
    """The row of one run, named by its folder relative to ``root``."""
    return summary_row(run.summary, os.path.relpath(run.dir, os.path.abspath(root)), run.args)


def _sort_key(row: Mapping[str, Any]):
    def part(value):
        return (value is None, value if value is not None else 0)
    return (part(row["dataset"]), part(row["profile"]), part(row["input_size"]), part(row["int_only"]),
            part(row["hardware_weight"]), row["run"])


def collect_runs(root: str) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """(rows sorted by dataset, profile, size, int_only, λ, run; [(path, problem)] of skipped files)."""
    root = os.fspath(root)
    rows, problems = [], []
    for path in find_summaries(root):
        try:
            rows.append(table_row(read_run(os.path.dirname(path)), root))
        except RunReadError as exc:
            problems.append((path, exc.why))
    rows.sort(key=_sort_key)
    return rows, problems


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_value(key: str, value: Any) -> str:
    """How a table cell shows a raw value ("-" when missing)."""
    if value is None:
        return MISSING
    if key == "int_only":
        return "yes" if value else "no"
    if key in TEXT_COLUMNS:
        return str(value)
    if key == "input_size":
        return f"{value:g}"
    if key == "hardware_weight":
        return f"{value:g}"
    if key in ("search_time_s", "finetune_time_s"):
        return format_duration(value)
    if key == "compression":
        return f"{value:.1f}x"
    if key in ("peak_ram_kb", "flash_kb"):
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _cells(rows: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    headers = [header for _, header in COLUMNS]
    return headers, [[format_value(key, row.get(key)) for key, _ in COLUMNS] for row in rows]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned plain text: text columns left-aligned, numbers right-aligned."""
    headers, body = _cells(rows)
    widths = [max(len(headers[i]), *(len(r[i]) for r in body)) if body else len(headers[i])
              for i in range(len(headers))]

    def line(cells):
        parts = [cell.ljust(w) if key in TEXT_COLUMNS else cell.rjust(w)
                 for (key, _), cell, w in zip(COLUMNS, cells, widths)]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    return "\n".join(out) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers, body = _cells(rows)
    align = [":--" if key in TEXT_COLUMNS else "--:" for key, _ in COLUMNS]

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(align)] + [line(r) for r in body]) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Raw values (seconds, plain numbers, true/false), empty cells where missing, keys as headers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key for key, _ in COLUMNS])
    for row in rows:
        values = []
        for key, _ in COLUMNS:
            value = row.get(key)
            if value is None:
                values.append("")
            elif isinstance(value, bool):
                values.append("true" if value else "false")
            elif isinstance(value, float) and value.is_integer() and key in ("input_size",):
                values.append(str(int(value)))
            else:
                values.append(str(value))
        writer.writerow(values)
    return buffer.getvalue()


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    write_text_atomic(csv_text(rows), path)


def write_markdown(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    write_text_atomic(markdown_table(rows), path)
