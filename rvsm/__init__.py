"""rvsm: sparse neural networks by the Relaxed Variable Splitting Method (RVSM) and RVSCGD.

The algorithm library: torch and the standard library only (no web, queue or database imports).
Progress leaves it through plain callbacks.
"""

from . import algorithms, bounds, problems, prox, toy
from .algorithms import ToyConfig, ToyRun, run_one, run_toy
from .prox import PENALTIES, Threshold, penalty_value, threshold, threshold_
from .toy import SpecError, run_spec

__all__ = [
    "PENALTIES",
    "SpecError",
    "Threshold",
    "ToyConfig",
    "ToyRun",
    "algorithms",
    "bounds",
    "penalty_value",
    "problems",
    "prox",
    "run_one",
    "run_spec",
    "run_toy",
    "threshold",
    "threshold_",
    "toy",
]

__version__ = "0.1.0"
