"""Shared run helpers: device/AMP resolution, single-process collectives, log.csv, progress, plots."""
import argparse
import csv

import pytest
import torch

from Search_CIFAR10.reporting.figures.training_curves import plot_training_curves, plotted_columns
from Search_CIFAR10.training.log import format_epoch, progress, write_log_csv
from Search_CIFAR10.training.loop import WarmupCosine, param_groups
from Search_CIFAR10.training.runtime import (add_runtime_args, all_reduce_mean, all_reduce_sum, resolve_device,
                                             setup_runtime, unwrap)


def test_runtime_on_cpu_and_flags():
    parser = argparse.ArgumentParser()
    add_runtime_args(parser)
    rt = setup_runtime(parser.parse_args(["--device", "cpu", "--amp"]))
    assert rt.device.type == "cpu" and rt.amp_dtype is None and not rt.channels_last
    assert rt.is_main and not rt.distributed and rt.wrap(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear
    assert not rt.grad_scaler().is_enabled()
    with rt.autocast():  # --amp is ignored on CPU: a matmul stays float32 (CPU autocast would give bfloat16)
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
            resolve_device("cuda")
    assert torch.equal(all_reduce_sum([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.equal(all_reduce_mean(torch.tensor([4.0])), torch.tensor([4.0]))
    m = torch.nn.Linear(1, 1)
    assert unwrap(m) is m


def test_log_csv_keeps_every_column_and_a_resumed_run_rewrites_it(tmp_path):
    path = tmp_path / "log.csv"
    rows = []
    for e in range(1, 4):
        rows.append({"epoch": e, "train_loss": 1.0 / e, "val_acc": 50.0 + e})
        write_log_csv(str(path), rows)
    rows.append({"epoch": 4, "train_loss": 0.2, "val_acc": 55.0, "temperature": 0.5})  # a new column
    write_log_csv(str(path), rows)
    read = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in read] == ["1", "2", "3", "4"] and read[3]["temperature"] == "0.5"
    assert read[0]["temperature"] == ""
    resumed = rows[:2]  # the checkpoint covers epochs 1-2
    write_log_csv(str(path), resumed)
    assert [r["epoch"] for r in csv.DictReader(path.open())] == ["1", "2"]
    resumed.append({"epoch": 3, "train_loss": 0.3, "val_acc": 53.0})
    write_log_csv(str(path), resumed)
    assert len(path.read_text().strip().splitlines()) == 4
    line = format_epoch({"epoch": 3, "lr": 0.05, "val_acc": 97.123456}, total_epochs=10)
    assert line == "epoch 3/10 | lr 0.05 | val_acc 97.12"


def test_progress_is_silent_without_a_terminal(capsys):
    items = [1, 2, 3]
    assert progress(items, desc="x") is items  # pytest captures stdout: not a TTY
    assert list(progress(items, enabled=True)) == items


def test_plot_curves_writes_png(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 10 * e, "val_acc": "9"} for e in (1, 2, 3)]
    plot_training_curves(rows, str(tmp_path / "curves.png"))
    drawn = plotted_columns(rows)
    assert drawn == ["train_loss", "val_loss", "train_acc", "val_acc"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_and_weight_decay_groups():
    sched = WarmupCosine(total_steps=100, warmup_steps=10, min_ratio=0.0)
    assert sched(0) == pytest.approx(0.1) and sched(9) == pytest.approx(1.0)
    assert sched(10) == pytest.approx(1.0) and sched(55) == pytest.approx(0.5) and sched(100) == pytest.approx(0.0)
    assert WarmupCosine(total_steps=8, warmup_steps=8).warmup_steps == 4, "a short run still anneals"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)
    decay, no_decay = param_groups(model.named_parameters(), 5e-4)
    assert [p.dim() for p in decay["params"]] == [4, 2] and decay["weight_decay"] == 5e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # conv bias, BN weight and bias
