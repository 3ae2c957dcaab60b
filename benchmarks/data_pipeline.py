"""Does the in-memory data pipeline keep up with the model? One run, side by side:

  * the loader alone (gather + resize + augment + normalise on the device), with and without augmentation,
  * one FP32 training step alone (forward, backward, optimizer) on a batch that is already made,
  * a real training pass (loader + step), as the pretraining script runs it.

    PYTHONPATH=. python benchmarks/data_pipeline.py                     # digits, MobileNetV2 w0.35, 32 px, CPU
    PYTHONPATH=. python benchmarks/data_pipeline.py --input_size 112 --device cuda --amp
"""
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from data.loader import DeviceLoader  # noqa: E402
from Search_CIFAR10.pretrain.trainer import build_fp32_model, build_parser  # noqa: E402
from Search_CIFAR10.training.data import build_loaders  # noqa: E402
from Search_CIFAR10.training.loop import build_optimizer, param_groups, train_one_epoch  # noqa: E402
from Search_CIFAR10.training.runtime import add_runtime_args, setup_runtime  # noqa: E402
from tensor_analysis.cli import DefaultsHelpFormatter, Parser, positive_float, positive_int, run_cli  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(loader: DeviceLoader, batches: int, device) -> float:
    """Images per second through ``batches`` batches (the loader restarts as often as needed)."""
    done = seen = 0
    epoch = 0
    _sync(device)
    start = time.perf_counter()
    while done < batches:
        loader.set_epoch(epoch)
        for x, y in loader:
            seen += len(y)
            done += 1
            if done == batches:
                break
        epoch += 1
    _sync(device)
    return seen / (time.perf_counter() - start)


def time_steps(model, optimizer, criterion, runtime, x, y, steps: int) -> float:
    _sync(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        with runtime.autocast():
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(runtime.device)
    return steps * len(y) / (time.perf_counter() - start)


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits", help="any --dataset of the pretraining script")
    p.add_argument("--data_dir", default=None, help="as in the pretraining script")
    p.add_argument("--model", default="mobilenetv2", help="registered model")
    p.add_argument("--width_mult", type=positive_float, default=0.35, help="channel width multiplier")
    p.add_argument("--input_size", type=positive_int, default=32, help="image side the model sees")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--batches", type=positive_int, default=20, help="timed batches per measurement")
    add_runtime_args(p)
    args = p.parse_args(argv)
    rt = setup_runtime(args)
    # the pretraining script's own parser fills in every data/model default we do not set here
    pargs = build_parser().parse_args(["--dataset", args.dataset, "--model", args.model,
                                       "--width_mult", str(args.width_mult), "--input_size", str(args.input_size)]
                                      + (["--data_dir", args.data_dir] if args.data_dir else []))
    splits, train_loader, _, _ = build_loaders(pargs, args.batch_size, args.input_size, rt.device, seed=0,
                                               channels_last=rt.channels_last)
    plain = DeviceLoader(splits.train_x, splits.train_y, args.batch_size, args.input_size, splits.mean,
                         splits.std, shuffle=True, augment=False, flip=splits.flip, seed=0, drop_last=True,
                         channels_last=rt.channels_last)
    model = rt.prepare_model(build_fp32_model(pargs, splits.num_classes))
    optimizer = build_optimizer("sgd", param_groups(model.named_parameters(), 5e-4), lr=0.01)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    x, y = next(iter(train_loader))

    # warm-up: first calls allocate, pick kernels, fill caches
    time_loader(train_loader, 2, rt.device)
    time_steps(model, optimizer, criterion, rt, x, y, 2)

    aug_ips = time_loader(train_loader, args.batches, rt.device)
    plain_ips = time_loader(plain, args.batches, rt.device)
    step_ips = time_steps(model, optimizer, criterion, rt, x, y, args.batches)
    n_batches = min(args.batches, len(train_loader))
    train_loader.set_epoch(0)
    limited = _Take(train_loader, n_batches)
    epoch_ips = train_one_epoch(model, limited, optimizer, rt, criterion, show_progress=False)["images_per_s"]

    print(f"data pipeline vs training step: {args.dataset} ({len(splits.train_y)} train images, stored "
          f"{splits.image_size}px) -> {args.input_size}px, batch {args.batch_size}, {args.model} "
          f"w{args.width_mult:g}, {rt.describe()}, {torch.get_num_threads()} CPU threads")
    kinds = ["crop"] + ([f"rotate {splits.rotate_deg:g} deg"] if splits.rotate_deg else []) \
        + (["flip"] if splits.flip else []) + ["jitter"]
    rows = [(f"loader, augmented ({'/'.join(kinds)})", aug_ips),
            ("loader, no augmentation", plain_ips),
            ("training step alone (fwd+bwd+SGD)", step_ips),
            ("training with the loader", epoch_ips)]
    for name, ips in rows:
        print(f"  {name:<45s} {ips:12.1f} images/s")
    print(f"  augmented loader / training step = {aug_ips / step_ips:.1f}x "
          f"({'the pipeline keeps up' if aug_ips > step_ips else 'the pipeline is the bottleneck'}); "
          f"loader share of a training pass ~ {100.0 * step_ips / aug_ips:.1f}%")
    return 0


class _Take:
    """The first ``n`` batches of a loader (len() included, for the progress bar)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


if __name__ == "__main__":
    run_cli(main)
