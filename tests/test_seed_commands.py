"""The seed's README commands, as written, from a copy of the repository (they write next to
themselves, never into this checkout): offline, the training commands end with one line naming the
missing dataset and --dataset digits; the tensor_analysis commands succeed; with --dataset digits and
tiny epochs added, the training commands run.

The seed's README, with PYTHONPATH pointing at the repository root:
    cd Search_CIFAR10/pretrain && python pretrain_cifar10_mobilenetv2.py --batch_size 256
    cd Search_CIFAR10/dnas && nohup env PYTHONPATH=<root> python dnas_search_cifar10_mbv2.py \
        --tensor_analysis_json ../tensor_analysis_result/mbv2_cifar10_tensor_analysis_results.json \
        --input_size 32 > mbv2_mixed_32x32_dnas_search.log 2>&1 &      (and the same with --int_only)
    cd tensor_analysis && python tensor_memory_filter.py --model_type mobilenetv2 --memory_threshold 512 --input_size 112
    python tensor_latency_predictor.py --model_type mobilenetv2 --input_size 112 \
        --precision_mapping_file example_precision_mapping.json
    cd Search_CIFAR10/dnas && bash run_all_dnas.sh
"""
import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "tensor_analysis", "Search_CIFAR10", "data")
SEARCH = ("nohup env PYTHONPATH={root} python dnas_search_cifar10_mbv2.py --tensor_analysis_json "
          "../tensor_analysis_result/mbv2_cifar10_tensor_analysis_results.json --input_size 32{extra} > {log} 2>&1 &"
          "\nwait")
OFFLINE = ("CIFAR-10 (cifar-10-batches-py/) is not in {root}/data and could not be downloaded", "--dataset digits")
TINY_PRETRAIN = " --dataset digits --epochs 1 --warmup_epochs 0 --limit_train 512 --limit_eval 64 --threads 1"
TINY_SEARCH = (" --dataset digits --epochs 1 --warmup_epochs 0 --finetune_epochs 0 --batch_size 32 --limit_train 64 "
               "--limit_eval 32 --threads 1 --compile off")


@pytest.fixture(scope="module")
def seed_root(tmp_path_factory):
    """The repository's code and shipped results (no datasets, no runs) and a ``python`` on PATH."""
    root = tmp_path_factory.mktemp("seed") / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "runs", "cifar-*", "*.tar.gz", "*.mat")
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), root / package, ignore=ignore)
    shutil.copy(os.path.join(REPO, "__init__.py"), root / "__init__.py")
    bin_dir = root.parent / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return root


@pytest.fixture
def shell(run_process, seed_root):
    """``shell(folder, command)``: the command as a user types it in ``folder`` of the copy."""
    def run(folder, command, timeout=300):
        env = {"PATH": f"{seed_root.parent / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(seed_root)}
        text = command.replace("{root}", str(seed_root))
        return run_process(["bash", "-c", f"cd {folder} && {text}"], cwd=seed_root, env=env, timeout=timeout,
                           pythonpath=False)
    return run


def said(text):
    """The lines a command printed, without Python warnings and nohup's own note."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("nohup:")
            and "Warning" not in line and "warnings.warn" not in line]


def offline_line(lines, seed_root):
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ") and all(w.format(root=seed_root) in line for w in OFFLINE), line
    return line


def test_pretraining_offline_ends_with_one_line_and_runs_on_digits(shell, seed_root):
    done = shell("Search_CIFAR10/pretrain", "python pretrain_cifar10_mobilenetv2.py --batch_size 256")
    assert done.returncode == 2
    offline_line(said(done.stderr), seed_root)
    assert not (seed_root / "runs").exists(), "nothing is written before the data is there"
    done = shell("Search_CIFAR10/pretrain", "python pretrain_cifar10_mobilenetv2.py --batch_size 256" + TINY_PRETRAIN)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (seed_root / "runs" / "pretrain" / "digits_mobilenetv2_w0.35_s32" / "summary.json").is_file()


@pytest.mark.parametrize("extra, log", [("", "mbv2_mixed_32x32_dnas_search.log"),
                                        (" --int_only", "mbv2_int_only_32x32_dnas_search.log")])
def test_the_search_under_nohup_offline_logs_one_line(shell, seed_root, extra, log):
    done = shell("Search_CIFAR10/dnas", SEARCH.format(root="{root}", extra=extra, log=log))
    assert done.returncode == 0  # the shell's own status: the search runs in the background
    offline_line(said((seed_root / "Search_CIFAR10" / "dnas" / log).read_text()), seed_root)
    assert not (seed_root / "runs" / "dnas").exists(), "nothing is written before the data is there"


def test_the_search_as_written_runs_on_digits(shell, seed_root):
    log = "mbv2_mixed_32x32_dnas_search.log"
    done = shell("Search_CIFAR10/dnas", SEARCH.format(root="{root}", extra=TINY_SEARCH, log=log), timeout=600)
    text = (seed_root / "Search_CIFAR10" / "dnas" / log).read_text()
    assert done.returncode == 0 and said(text)[-1].startswith("done: "), text[-3000:]
    summary = seed_root / "runs" / "dnas" / "mbv2_cifar10_tensor_analysis_results_lam0.5" / "summary.json"
    assert summary.is_file()


def test_the_tensor_analysis_commands_succeed(shell, seed_root):
    done = shell("tensor_analysis", "python tensor_memory_filter.py --model_type mobilenetv2 --memory_threshold 512 "
                                    "--input_size 112")
    assert done.returncode == 0 and done.stdout.strip().endswith("wrote mobilenetv2_w1.0_s112_512kb.json"), done.stderr
    assert (seed_root / "tensor_analysis" / "mobilenetv2_w1.0_s112_512kb.json").is_file()
    # the example mapping names MobileNetV2-1.0's layers (made at 32 px): it applies at 112 px as well
    done = shell("tensor_analysis", "python tensor_latency_predictor.py --model_type mobilenetv2 --input_size 112 "
                                    "--precision_mapping_file example_precision_mapping.json")
    assert done.returncode == 0, done.stderr
    assert "input_size=112" in done.stdout.splitlines()[0] and "latency:" in done.stdout


def test_the_batch_offline_ends_with_one_line_before_starting_a_search(shell, seed_root):
    done = shell("Search_CIFAR10/dnas", "bash run_all_dnas.sh")
    assert done.returncode == 2
    offline_line(said(done.stderr), seed_root)
    assert "started" not in done.stdout and not (seed_root / "runs" / "dnas_batch").exists()
    done = shell("Search_CIFAR10/dnas", "bash run_all_dnas.sh --dataset digits --dry_run")
    assert done.returncode == 0 and done.stdout.count("nohup ") == 12, done.stdout + done.stderr


def test_the_analysis_the_seed_search_names_is_shipped_and_current():
    from tensor_analysis.analysis_file import analysis_document, load_analysis_json
    from tensor_analysis.graph import analyze_network
    shipped = load_analysis_json(os.path.join(REPO, "Search_CIFAR10", "tensor_analysis_result",
                                              "mbv2_cifar10_tensor_analysis_results.json"))
    assert shipped["memory_threshold_kb"] == 512
    assert {k: shipped["model"][k] for k in ("type", "width_mult", "input_size", "num_classes")} == {
        "type": "mobilenetv2", "width_mult": 1.0, "input_size": 32, "num_classes": 10}
    fresh = analysis_document(analyze_network(shipped["model"]), 512)
    assert [layer["allowed_precisions"] for layer in shipped["layers"]] == \
        [layer["allowed_precisions"] for layer in fresh["layers"]]
