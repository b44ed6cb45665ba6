"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(function: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call; CUDA work is synchronised."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    function()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        function()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
