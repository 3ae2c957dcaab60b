"""The figures a run directory's own files allow."""
from __future__ import annotations

import os
from typing import List, Mapping

from models.files import read_json

from .alpha_evolution import plot_alpha_evolution
from .training_curves import plot_training_curves, read_log_csv


def plot_run_dir(run_dir) -> List[str]:
    """(Re)draw the plots a run directory's own files allow: training_curves.png from log.csv and
    alpha_evolution.png from alphas.json. Returns the paths written (usable while a run is going on)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    written = []
    log_path = os.path.join(run_dir, "log.csv")
    if os.path.isfile(log_path):
        rows = read_log_csv(log_path)
        if rows:
            written.append(plot_training_curves(rows, os.path.join(run_dir, "training_curves.png")))
    alphas_path = os.path.join(run_dir, "alphas.json")
    if os.path.isfile(alphas_path):
        alphas = read_json(alphas_path, "alphas.json")
        if isinstance(alphas, Mapping) and alphas.get("history"):
            written.append(plot_alpha_evolution(alphas, os.path.join(run_dir, "alpha_evolution.png")))
    return written
