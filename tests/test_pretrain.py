"""FP32 pretraining: exact resume, checkpoint format, atomic saves, DDP on 2 Gloo processes, bad input."""
import json
import os
import socket

import pytest
import torch

from models import build_from_spec
from models.files import load_checkpoint
from models.network import mixed_layers
from Search_CIFAR10.pretrain import trainer
from Search_CIFAR10.pretrain.trainer import build_parser, run_pretrain

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(REPO, "Search_CIFAR10", "pretrain", "pretrain_cifar10_mobilenetv2.py")
TINY = ["--dataset", "digits", "--limit_train", "48", "--limit_eval", "16", "--width_mult", "0.1",
        "--input_size", "16", "--batch_size", "16", "--epochs", "2", "--warmup_epochs", "0.5",
        "--lr", "0.05", "--device", "cpu", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """--threads 1 (in TINY) sets torch's process-wide thread count; give the other test files theirs
    back. One thread also keeps tiny runs fast on a shared machine, where 2 OpenMP threads wait on
    each other."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Killed(Exception):
    """Stands in for SIGKILL: the process stops wherever it is, nothing else runs."""


def tiny_args(out, *extra):
    return build_parser().parse_args(TINY + ["--output_dir", str(out), *extra])


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_pretrain(tiny_args(out))
    return out, result


def test_run_writes_its_files_and_a_loadable_checkpoint(reference):
    out, result = reference
    for name in ("args.json", "split.json", "log.csv", "curves.png", "checkpoint_last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,lr,train_loss,train_acc,val_loss,val_acc")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] == 16 and 0 <= summary["test_acc"] <= 100
    # the documented way the search rebuilds the network
    ckpt = load_checkpoint(str(out / "best.pt"))
    model = build_from_spec(ckpt["spec"])
    model.load_state_dict(ckpt["model"])
    assert ckpt["precision"] == "fp32" and ckpt["split"]["dataset"] == "digits"
    for _, layer in mixed_layers(model):
        layer.set_precision("fp32")
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result["model"].eval()(x))
    last = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert {"optimizer", "scheduler", "rng", "epoch", "args"} <= set(last) and last["epoch"] == 2


def test_killed_mid_epoch_then_resumed_is_bit_identical(reference, tmp_path):
    ref_out, _ = reference

    def kill(epoch, step, model):
        if epoch == 1 and step == 1:
            raise Killed

    with pytest.raises(Killed):
        run_pretrain(tiny_args(tmp_path), on_step=kill)
    assert load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["epoch"] == 1
    torch.manual_seed(12345)  # a new process starts with other RNG states
    run_pretrain(tiny_args(tmp_path, "--resume"))
    assert_same_state(load_checkpoint(str(ref_out / "checkpoint_last.pt"))["model"],
                      load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["model"])
    assert (tmp_path / "log.csv").read_text() .count("\n") == 3, "the redone epoch replaces, not duplicates, its row"


def test_kill_while_saving_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    ref_out, _ = reference
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 writes best.pt and checkpoint_last.pt; die writing epoch 2's first
            f.write(b"half a checkpoint")
            raise Killed
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        run_pretrain(tiny_args(tmp_path))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["epoch"] == 1
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")], "no temporary file is left behind"
    run_pretrain(tiny_args(tmp_path, "--resume"))
    assert_same_state(load_checkpoint(str(ref_out / "best.pt"))["model"],
                      load_checkpoint(str(tmp_path / "best.pt"))["model"])


def _cli_in_process(argv, capsys):
    """The script's entry point (run_cli(main)) without a new interpreter: exit code and stderr lines."""
    from tensor_analysis.cli import run_cli
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(trainer.main, argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_bad_input_one_line(reference, tmp_path, capsys):
    ref_out, _ = reference
    before = (ref_out / "checkpoint_last.pt").read_bytes()
    cases = [
        (TINY + ["--output_dir", str(ref_out), "--resume", "--width_mult", "0.2"],
         "was made for another model (width_mult 0.1 there, 0.2 here)"),
        (TINY + ["--output_dir", str(ref_out), "--resume", "--epochs", "3"], "was made with --epochs 2 (now 3)"),
        (TINY + ["--output_dir", str(ref_out)], "already holds a finished run"),
        (TINY + ["--output_dir", str(tmp_path / "c"), "--dataset", "cifar10", "--data_dir", str(tmp_path / "none")],
         "could not be downloaded"),
        (TINY + ["--output_dir", str(tmp_path / "c"), "--dataset", "cifar10", "--data_dir", str(tmp_path / "none"),
                 "--no_download"], "CIFAR-10 folder not found; pass --download"),
        (TINY + ["--output_dir", str(tmp_path / "u"), "--dataset", "mnist"], "unknown dataset 'mnist'"),
    ]
    for argv, message in cases:
        code, lines = _cli_in_process(argv, capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert (ref_out / "checkpoint_last.pt").read_bytes() == before, "a refused run leaves the old run alone"
    assert not (tmp_path / "c").exists() and not (tmp_path / "u").exists()


def test_script_runs_from_its_folder_and_fails_in_one_line(run_python, tmp_path):
    """The real script in a fresh interpreter, started from its own folder without PYTHONPATH."""
    (tmp_path / "empty_class_a").mkdir()
    proc = run_python([SCRIPT, "--dataset", "imagefolder", "--data_dir", str(tmp_path), "--output_dir",
                       str(tmp_path / "out")], cwd=os.path.dirname(SCRIPT), timeout=180, pythonpath=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "hold no images" in lines[0]
    assert not (tmp_path / "out").exists()


# -- DistributedDataParallel, 2 Gloo processes on CPU ----------------------------------------------------
def _ddp_worker(rank, world, port, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    args = build_parser().parse_args(TINY + ["--epochs", "1", "--batch_size", "8", "--output_dir", out])
    runtime = trainer.setup_runtime(args)
    trained = {}

    def snapshot(epoch, step, model):  # the weights right after each optimizer step, on this rank
        trained["steps"] = step + 1
        trained["params"] = {k: v.detach().clone() for k, v in model.named_parameters()}

    try:
        run_pretrain(args, runtime=runtime, on_step=snapshot)
        torch.save(trained, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        runtime.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration  # two interpreters, one per rank
def test_ddp_two_gloo_ranks_end_identical(tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # 48 images, 24 per rank, 8 per batch: 3 steps on each rank
    assert r0["steps"] == r1["steps"] == 3
    assert_same_state(r0["params"], r1["params"])
    saved = load_checkpoint(str(out / "checkpoint_last.pt"))["model"]
    assert_same_state({k: saved[k] for k in r0["params"]}, r0["params"])
    torch.manual_seed(0)
    initial = trainer.build_fp32_model(tiny_args(out), 10).state_dict()
    assert not torch.equal(initial["features.0.0.weight"], r0["params"]["features.0.0.weight"]), "it trained"
