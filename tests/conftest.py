"""Test-session set-up shared by every test file.

* One CPU thread: tests run tiny tensors, where threads buy nothing, and on a shared, loaded machine
  OpenMP's spin-waiting between threads makes each op up to ~100x slower (a width-0.1 MobileNetV2
  step: 0.2 s on one thread, 17 s on two while other jobs run).
* Eager quantizers: torch.compile costs seconds per graph on first use, so tests use the eager path
  unless ADAPTQNET_COMPILE is set or a test turns compilation on itself (tests/test_quantizers.py
  does, to check that the fused path computes the same numbers).
Subprocesses started by tests inherit both settings through the environment.
"""
import os

os.environ.setdefault("ADAPTQNET_COMPILE", "off")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
