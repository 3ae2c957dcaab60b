"""FP32 pretraining (any registered model, any supported dataset); see trainer.py for the checkpoint format.

    python pretrain_cifar10_mobilenetv2.py --dataset digits --width_mult 0.35 --input_size 32
    python pretrain_cifar10_mobilenetv2.py --dataset cifar10 --data_dir ../../data --download --width_mult 1.0
    torchrun --nproc_per_node 2 pretrain_cifar10_mobilenetv2.py --dataset cifar10 --device cuda --amp
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.pretrain.trainer import main  # noqa: E402
from tensor_analysis.cli import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
