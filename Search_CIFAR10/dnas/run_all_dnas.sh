#!/usr/bin/env bash
# The seed's batch of stage-1 searches as background nohup jobs, one log each, at most --jobs at once,
# then one table of every run's summary.json (summarize_runs.py). Run --help for the flags.
set -euo pipefail

# Where each run's analysis.json is looked up: {width}, {size} and {threshold} are filled in per run.
# Relative paths are relative to this script's folder (the script cds there).
ANALYSIS_PATTERN_DEFAULT='../tensor_analysis_result/mobilenetv2_w{width}_s{size}_{threshold}kb.json'
SEARCH_SCRIPT="${SEARCH_SCRIPT:-dnas_search_cifar10_mbv2.py}"
PY="${PYTHON:-python}"

usage() {
    cat <<'EOF'
Usage: bash run_all_dnas.sh [options]

Launches the stage-1 DNAS searches of the seed's batch as background nohup jobs (one log each) and,
once all have finished, prints a table of their summary.json files.

The batch: for every input size in --sizes and every mode in --modes (mixed precision, INT-only),
one search per λ in --lambdas at the --sweep_sizes, and one at --base_lambda at the other sizes.
With the defaults: 32 px mixed and INT-only at λ = 0, 0.1, 0.5, 1; 112 and 144 px mixed and INT-only
at λ = 0.1 (12 searches).

Each search runs:
  $PYTHON dnas_search_cifar10_mbv2.py --tensor_analysis_json <analysis file> --input_size S
      [--int_only] --hardware_weight L --output_dir <output_root>/<run> [--pretrained P]
      [--dataset D] [--epochs N] [--extra arguments]
and logs to <output_root>/logs/<run>.log. Runs whose folder already holds a summary.json are
skipped unless --force is given.

Options:
  --jobs N              searches running at once (default 1: one search already uses every CPU core;
                        raise it for several GPUs or a big machine)
  --dry_run             print the commands instead of running them (the input files are still checked)
  --pretrained PATH     FP32 checkpoint passed to every search (--pretrained)
  --dataset NAME        dataset passed to every search (default: the search script's)
  --epochs N            search epochs passed to every search (default: the search script's)
  --hardware "P ..."    hardware profile(s) (--hardware); the whole batch runs once per profile, e.g.
                        --hardware "stm32h747 artifact" (default: the search script's)
  --output_root DIR     where the run folders and logs go (default ../../runs/dnas_batch, relative to
                        this script's folder)
  --extra "ARGS"        more arguments for every search, e.g. --extra "--hardware stm32h747 --device cuda"
                        (split on spaces; quotes inside are not interpreted)
  --sizes "S ..."       input sizes (default "32 112 144")
  --modes "M ..."       mixed and/or int_only (default "mixed int_only")
  --lambdas "L ..."     the λ sweep, values of --hardware_weight (default "0 0.1 0.5 1")
  --sweep_sizes "S ..." sizes that get the whole λ sweep; "all" for every size (default "32")
  --base_lambda L       λ of the other sizes (default 0.1)
  --width_mult W        width multiplier in the analysis file name (default 1.0; the demo uses 0.35)
  --threshold_kb K      memory threshold in the analysis file name (default 512)
  --analysis_pattern P  analysis file name pattern with {width}, {size} and {threshold}
                        (default ../tensor_analysis_result/mobilenetv2_w{width}_s{size}_{threshold}kb.json)
  --force               run again even where a summary.json exists
  -h, --help            show this help

Environment: PYTHON (default python) runs the searches and the summary, e.g.
  PYTHON=../../.venv/bin/python bash run_all_dnas.sh --jobs 2
To keep the batch going after logging out, run the launcher itself under nohup:
  nohup bash run_all_dnas.sh --jobs 2 > batch.log 2>&1 &
Ctrl-C (or kill) stops the launcher and the searches it started.
EOF
}

die() {
    echo "error: $*" >&2
    exit 2
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

is_positive_int() { [[ "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]]; }
is_number() { [[ "$1" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }

# tensor_memory_filter.py names its files with Python's str(float): 1 -> 1.0, 0.350 -> 0.35
width_as_python_prints_it() {
    local w="$1"
    [[ "$w" == *.* ]] || w="$w.0"
    [[ "$w" != .* ]] || w="0$w"
    while [[ "$w" == *0 && "$w" != *.0 ]]; do w="${w%0}"; done
    [[ "$w" != *. ]] || w="${w}0"
    printf '%s\n' "$w"
}

if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3) )); then
    die "bash 4.3 or newer is needed (for 'wait -n'); this is bash $BASH_VERSION"
fi

caller_dir="$PWD"
# a path the user typed is relative to where they ran the script, not to the script's folder
from_caller() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$caller_dir/$1" ;;
    esac
}

jobs_at_once=1
dry_run=0
force=0
pretrained=""
dataset=""
epochs=""
profiles=""
output_root="../../runs/dnas_batch"
extra=""
sizes="32 112 144"
modes="mixed int_only"
lambdas="0 0.1 0.5 1"
sweep_sizes="32"
base_lambda="0.1"
width_mult="1.0"
threshold_kb="512"
analysis_pattern="$ANALYSIS_PATTERN_DEFAULT"

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --jobs) need_value "$@"; jobs_at_once="$2"; shift 2 ;;
        --dry_run|--dry-run) dry_run=1; shift ;;
        --force) force=1; shift ;;
        --pretrained) need_value "$@"; pretrained="$(from_caller "$2")"; shift 2 ;;
        --dataset) need_value "$@"; dataset="$2"; shift 2 ;;
        --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
        --hardware) need_value "$@"; profiles="$2"; shift 2 ;;
        --output_root) need_value "$@"; output_root="$(from_caller "$2")"; shift 2 ;;
        --extra) [[ $# -ge 2 ]] || die "--extra needs a value (see --help)"; extra="$2"; shift 2 ;;
        --sizes) need_value "$@"; sizes="$2"; shift 2 ;;
        --modes) need_value "$@"; modes="$2"; shift 2 ;;
        --lambdas) need_value "$@"; lambdas="$2"; shift 2 ;;
        --sweep_sizes) need_value "$@"; sweep_sizes="$2"; shift 2 ;;
        --base_lambda) need_value "$@"; base_lambda="$2"; shift 2 ;;
        --width_mult) need_value "$@"; width_mult="$2"; shift 2 ;;
        --threshold_kb) need_value "$@"; threshold_kb="$2"; shift 2 ;;
        --analysis_pattern) need_value "$@"; analysis_pattern="$(from_caller "$2")"; shift 2 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

is_positive_int "$jobs_at_once" || die "--jobs: expected a positive integer, got '$jobs_at_once'"
[[ -z "$epochs" ]] || is_positive_int "$epochs" || die "--epochs: expected a positive integer, got '$epochs'"
[[ "$width_mult" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || die "--width_mult: expected a positive number, got '$width_mult'"
width_mult="$(width_as_python_prints_it "$width_mult")"
is_number "$threshold_kb" || die "--threshold_kb: expected a positive number, got '$threshold_kb'"
is_number "$base_lambda" || die "--base_lambda: expected a non-negative number, got '$base_lambda'"
read -r -a size_list <<< "$sizes"
read -r -a mode_list <<< "$modes"
read -r -a lambda_list <<< "$lambdas"
read -r -a sweep_list <<< "$sweep_sizes"
read -r -a extra_args <<< "$extra"
read -r -a profile_list <<< "$profiles"
[[ ${#profile_list[@]} -gt 0 ]] || profile_list=("")   # one pass with the search script's default
[[ ${#size_list[@]} -gt 0 ]] || die "--sizes: expected at least one input size"
[[ ${#mode_list[@]} -gt 0 ]] || die "--modes: expected mixed and/or int_only"
[[ ${#lambda_list[@]} -gt 0 ]] || die "--lambdas: expected at least one value"
for s in "${size_list[@]}"; do is_positive_int "$s" || die "--sizes: expected positive integers, got '$s'"; done
for m in "${mode_list[@]}"; do
    [[ "$m" == mixed || "$m" == int_only ]] || die "--modes: expected mixed and/or int_only, got '$m'"
done
for l in "${lambda_list[@]}"; do is_number "$l" || die "--lambdas: expected non-negative numbers, got '$l'"; done
[[ "$analysis_pattern" == *"{size}"* ]] || \
    die "--analysis_pattern: expected a {size} placeholder (one analysis file per input size), got '$analysis_pattern'"

cd "$(dirname "$0")"

in_sweep() {
    local s
    for s in "${sweep_list[@]}"; do
        [[ "$s" == all || "$s" == "$1" ]] && return 0
    done
    return 1
}

analysis_file() {
    local f="$analysis_pattern"
    f="${f//\{width\}/$width_mult}"
    f="${f//\{size\}/$1}"
    f="${f//\{threshold\}/$threshold_kb}"
    printf '%s\n' "$f"
}

# ---- the plan: one entry per search ------------------------------------------------------------------
run_names=()
run_sizes=()
run_modes=()
run_lambdas=()
run_profiles=()
missing=()
for profile in "${profile_list[@]}"; do
    for size in "${size_list[@]}"; do
        analysis="$(analysis_file "$size")"
        if [[ ! -f "$analysis" ]]; then
            [[ " ${missing[*]-} " == *" $analysis "* ]] || missing+=("$analysis")
        fi
        if in_sweep "$size"; then size_lambdas=("${lambda_list[@]}"); else size_lambdas=("$base_lambda"); fi
        for mode in "${mode_list[@]}"; do
            for lam in "${size_lambdas[@]}"; do
                run_names+=("${dataset:+${dataset}_}mbv2_w${width_mult}_${mode}_${size}px_lam${lam}${profile:+_${profile}}")
                run_sizes+=("$size")
                run_modes+=("$mode")
                run_lambdas+=("$lam")
                run_profiles+=("$profile")
            done
        done
    done
done

run_dir() { printf '%s\n' "$output_root/${run_names[$1]}"; }

# fills the array cmd with search number $1's command line
build_command() {
    local i="$1"
    cmd=("$PY" "$SEARCH_SCRIPT" --tensor_analysis_json "$(analysis_file "${run_sizes[$i]}")"
         --input_size "${run_sizes[$i]}")
    if [[ "${run_modes[$i]}" == int_only ]]; then cmd+=(--int_only); fi
    cmd+=(--hardware_weight "${run_lambdas[$i]}" --output_dir "$(run_dir "$i")")
    if [[ -n "$pretrained" ]]; then cmd+=(--pretrained "$pretrained"); fi
    if [[ -n "$dataset" ]]; then cmd+=(--dataset "$dataset"); fi
    if [[ -n "$epochs" ]]; then cmd+=(--epochs "$epochs"); fi
    if [[ -n "${run_profiles[$i]}" ]]; then cmd+=(--hardware "${run_profiles[$i]}"); fi
    if [[ ${#extra_args[@]} -gt 0 ]]; then cmd+=("${extra_args[@]}"); fi
}

already_done() { [[ $force -eq 0 && -f "$(run_dir "$1")/summary.json" ]]; }

# ---- check every input before starting anything -------------------------------------------------------
if [[ ${#missing[@]} -gt 0 ]]; then
    for f in "${missing[@]}"; do
        echo "error: analysis file not found: $f (from $PWD)" >&2
    done
    echo "error: make it with tensor_analysis/tensor_memory_filter.py, or point --analysis_pattern /" \
         "--width_mult / --threshold_kb at the files you have" >&2
    exit 2
fi
[[ -z "$pretrained" || -f "$pretrained" ]] || die "--pretrained: checkpoint not found: $pretrained"
if [[ $dry_run -eq 0 ]]; then
    [[ -f "$SEARCH_SCRIPT" ]] || die "search script not found: $PWD/$SEARCH_SCRIPT"
    command -v "$PY" > /dev/null || die "python not found: '$PY' (set PYTHON=/path/to/python)"
fi

# Every search would download a missing dataset at once, into the same folder; fetch it once here, and
# offline stop with its one line instead of starting searches that all fail the same way.
if [[ $dry_run -eq 0 ]]; then
    data_flags=()
    if [[ -n "$dataset" ]]; then data_flags+=(--dataset "$dataset"); fi
    if [[ ${#extra_args[@]} -gt 0 ]]; then data_flags+=("${extra_args[@]}"); fi
    PYTHONPATH="$(cd ../.. && pwd)${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m Search_CIFAR10.training.data \
        ${data_flags[@]+"${data_flags[@]}"} || exit $?
fi

log_dir="$output_root/logs"
summary_cmd=("$PY" summarize_runs.py "$output_root" --csv "$output_root/summary.csv"
             --markdown "$output_root/summary.md")

if [[ $dry_run -eq 1 ]]; then
    echo "# ${#run_names[@]} searches, at most $jobs_at_once at once, from $PWD:"
    for i in "${!run_names[@]}"; do
        if already_done "$i"; then
            echo "# skip ${run_names[$i]}: $(run_dir "$i")/summary.json exists (--force runs it again)"
            continue
        fi
        build_command "$i"
        echo "nohup $(printf '%q ' "${cmd[@]}")> $(printf '%q' "$log_dir/${run_names[$i]}.log") 2>&1 &"
    done
    echo "# then, when all have finished:"
    printf '%q ' "${summary_cmd[@]}"
    echo
    exit 0
fi

# ---- run ---------------------------------------------------------------------------------------------
mkdir -p "$log_dir"
live_pids=()   # searches started and not yet reported, with their plan indices
live_runs=()
failed=0
finished=0
skipped=0
stamp() { date '+%Y-%m-%d %H:%M:%S'; }

# Report every search that has ended since the last call. 'wait PID' still returns the status of a
# child that has already ended; 'wait -n' alone cannot say which one it was.
reap_finished() {
    local running k pid status keep_pids=() keep_runs=()
    running=" $(jobs -rp | tr '\n' ' ') "
    for k in "${!live_pids[@]}"; do
        pid="${live_pids[$k]}"
        if [[ "$running" == *" $pid "* ]]; then
            keep_pids+=("$pid")
            keep_runs+=("${live_runs[$k]}")
            continue
        fi
        status=0
        wait "$pid" || status=$?
        finished=$((finished + 1))
        if [[ $status -eq 0 ]]; then
            echo "[$(stamp)] done    ${run_names[${live_runs[$k]}]}"
        else
            failed=$((failed + 1))
            echo "[$(stamp)] FAILED  ${run_names[${live_runs[$k]}]} (exit $status), see" \
                 "$log_dir/${run_names[${live_runs[$k]}]}.log" >&2
        fi
    done
    live_pids=("${keep_pids[@]}")
    live_runs=("${keep_runs[@]}")
}

# Block until a search ends. 'wait -n' returns at once when the last running job ended a moment ago
# (bash then has nothing left to wait for), so reaping after it never misses a search.
wait_for_one() {
    local status=0
    wait -n || status=$?
    if [[ $status -eq 127 ]]; then sleep 0.2; fi
    reap_finished
}

stop_all() {
    trap - INT TERM
    local pid running=()
    for pid in "${live_pids[@]}"; do
        if kill -0 "$pid" 2> /dev/null; then running+=("$pid"); fi
    done
    echo "interrupted: stopping ${#running[@]} running search(es) ${running[*]-}" >&2
    if [[ ${#running[@]} -gt 0 ]]; then kill -TERM "${running[@]}" 2> /dev/null || true; fi
    exit 130
}
trap stop_all INT TERM

for i in "${!run_names[@]}"; do
    if already_done "$i"; then
        echo "[$(stamp)] skip    ${run_names[$i]}: summary.json exists (--force runs it again)"
        skipped=$((skipped + 1))
        continue
    fi
    reap_finished
    while [[ ${#live_pids[@]} -ge $jobs_at_once ]]; do wait_for_one; done
    log="$log_dir/${run_names[$i]}.log"
    build_command "$i"
    nohup "${cmd[@]}" > "$log" 2>&1 &
    live_pids+=("$!")
    live_runs+=("$i")
    echo "[$(stamp)] started ${run_names[$i]} (pid $!), log: $log"
done
while [[ ${#live_pids[@]} -gt 0 ]]; do wait_for_one; done
trap - INT TERM

echo
echo "$finished searches run, $failed failed, $skipped skipped. Runs under $output_root:"
"${summary_cmd[@]}" || true   # it has said why there is no table; the runs' status decides the exit
[[ $failed -eq 0 ]] || exit 1
