"""Late-interaction scoring: MaxSim of query token vectors against page patch vectors.

A page's score for a query is ColBERT's late interaction, as ColPali and ColQwen score pages: for
each query token, its largest dot product with any of the page's vectors, summed over the tokens.
``maxsim`` computes it for several queries against many pages held as one matrix of rows (pages
one after the other, ``counts`` rows each): matrix products, a maximum per page, a sum per
query. On the CPU that is numpy (BLAS for the product, ``maximum.reduceat`` for the maxima); on a
CUDA device, torch (half precision products, ``segment_reduce`` for the maxima).

Both equal ``ColQwen2Processor.score_retrieval`` / ``ColPaliProcessor.score_retrieval`` on the
same vectors, except that those pad pages of different lengths with zero vectors, which make a
token's maximum at least 0; here a page's padding is never scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Floats held at once when scoring a block of pages: its rows and the (query tokens) x (rows) scores,
# 16M of them (64 MB in float32).
FLOATS_PER_BLOCK = 1 << 24
CONVERTED_ROWS = 8192  # float16 rows converted to float32 at once (4 MB at 128-d: stays in cache)


def token_bounds(queries: Sequence[np.ndarray]) -> np.ndarray:
    """Where each query's tokens start in their concatenation, and the end: (len(queries) + 1,)."""
    return np.cumsum([0, *(len(q) for q in queries)])


def maxsim(queries: Sequence[np.ndarray], rows: np.ndarray, counts: np.ndarray, *,
           device: str = "cpu") -> np.ndarray:
    """The MaxSim score of every query (each a (tokens, dim) array) against every page of
    ``rows`` (pages one after the other, ``counts[p]`` rows for page p, each count at least 1):
    a float32 (len(queries), len(counts)) array. ``device`` ``cpu`` uses numpy, a CUDA device
    torch. ``rows`` may be float16 (as patch files store them): on the CPU they are converted a
    few thousand rows at a time into one reused buffer, which costs a fifth of converting them
    all at once (measured: 200k x 128 rows, 2 cores)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(queries) or not len(counts):
        return np.zeros((len(queries), len(counts)), dtype=np.float32)
    if (counts < 1).any():
        raise ValueError("Every page needs at least one vector to be scored by MaxSim.")
    if device != "cpu":
        return _maxsim_torch(queries, rows, counts, device)
    tokens = np.ascontiguousarray(np.vstack(queries), dtype=np.float32)
    page_max = np.empty((len(tokens), len(counts)), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chunk = max(int(counts.max()), CONVERTED_ROWS)
    buffer = None if rows.dtype == np.float32 else np.empty((chunk, rows.shape[1]), dtype=np.float32)
    page = 0
    while page < len(counts):  # whole pages, about CONVERTED_ROWS rows at a time
        last = max(page + 1, int(np.searchsorted(starts, starts[page] + chunk, side="right")) - 1)
        if starts[last - 1] + counts[last - 1] - starts[page] > chunk:
            last -= 1
        first_row, end_row = starts[page], starts[last - 1] + counts[last - 1]
        block = rows[first_row:end_row]
        if buffer is not None:
            np.copyto(buffer[:len(block)], block)
            block = buffer[:len(block)]
        page_max[:, page:last] = np.maximum.reduceat(tokens @ block.T, starts[page:last] - first_row, axis=1)
        page = last
    return np.add.reduceat(page_max, token_bounds(queries)[:-1], axis=0)


def _maxsim_torch(queries: Sequence[np.ndarray], rows: np.ndarray, counts: np.ndarray, device: str) -> np.ndarray:
    import torch

    on = torch.device(device)
    dtype = torch.float16 if on.type == "cuda" else torch.float32
    tokens = torch.from_numpy(np.vstack(queries).astype(np.float32)).to(on, dtype)
    matrix = torch.from_numpy(np.ascontiguousarray(rows)).to(on, dtype)
    lengths = torch.from_numpy(counts).to(on)
    sim = (tokens @ matrix.T).float()
    page_max = torch.segment_reduce(sim, "max", lengths=lengths.expand(len(tokens), -1).contiguous(), axis=1)
    bounds = token_bounds(queries)
    sums = torch.stack([page_max[bounds[q]:bounds[q + 1]].sum(0) for q in range(len(queries))])
    return sums.cpu().numpy()


def maxsim_pairs(query: np.ndarray, page: np.ndarray) -> float:
    """The MaxSim score of one query against one page, written out plainly (for checking)."""
    return float((np.asarray(query, np.float64) @ np.asarray(page, np.float64).T).max(axis=1).sum())
