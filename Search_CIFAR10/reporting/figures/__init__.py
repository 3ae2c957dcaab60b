"""The project's figures, one module each: π per layer (alpha_evolution), the final precision map
(precision_map), training curves (training_curves), the accuracy/latency Pareto front (pareto), the
dual-core timeline (dual_timeline), and the figures of a run directory (run_figures).

Every function takes plain Python data (what log.csv, alphas.json and the per-layer reports hold, never a
model) and an output path, writes one PNG atomically (a reader never sees half an image and a failed plot
leaves the previous one intact) and returns the path. Bad input raises ValueError naming the argument.

Each precision has one colour everywhere (``PRECISION_COLORS``), taken from the Okabe–Ito palette, whose
colours stay distinguishable under the common colour-vision deficiencies (M. Okabe and K. Ito, "Color
Universal Design (CUD): how to make figures and presentations that are friendly to colorblind people",
2008, https://jfly.uni-koeln.de/color/). Metric lines use the palette's black and reddish purple, which
no precision uses, so a curve never reads as a precision.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, not pyplot: no global figure
registry to leak memory in long runs, and no display needed (nohup, headless servers).
"""
from .alpha_evolution import plot_alpha_evolution
from .common import PRECISION_COLORS, precision_color
from .dual_timeline import plot_dual_core_timeline
from .pareto import pareto_front, plot_pareto
from .precision_map import plot_precision_map, precision_segments
from .run_figures import plot_run_dir
from .training_curves import plot_training_curves, read_log_csv

__all__ = ["plot_alpha_evolution", "plot_dual_core_timeline", "plot_pareto", "pareto_front", "plot_precision_map",
           "precision_segments", "plot_run_dir", "plot_training_curves", "read_log_csv", "PRECISION_COLORS",
           "precision_color"]
