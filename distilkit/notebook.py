"""Helpers the book's chapters share: one call at the top of a notebook fixes seeds, threads
and the run size, so every executed output is reproducible."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .train import resolve_device

__all__ = ["NotebookSetup", "setup"]


@dataclass
class NotebookSetup:
    seed: int
    device: torch.device
    full: bool  #: True when DISTILKIT_FULL=1: chapters train longer / larger (meant for a GPU)

    def scale(self, small, full):
        """``small`` for the CI-sized run, ``full`` when DISTILKIT_FULL=1."""
        return full if self.full else small


def setup(seed: int = 0, threads: int = 1) -> NotebookSetup:
    """Seed Python, NumPy and torch; use ``threads`` CPU threads (1 keeps results bitwise
    reproducible however many cores the machine has); pick the device. With the environment
    variable ``DISTILKIT_FULL=1`` chapters switch to their full-size runs on the best device;
    otherwise they run on the CPU at CI size."""
    full = os.environ.get("DISTILKIT_FULL", "0") not in ("", "0", "false", "False")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    device = resolve_device("auto") if full else torch.device("cpu")
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.grid": True,
                                    "grid.alpha": 0.3, "axes.spines.top": False,
                                    "axes.spines.right": False})
    except ImportError:  # matplotlib is only in the book extra
        pass
    return NotebookSetup(seed=seed, device=device, full=full)
