"""Choosing a FAISS index from the collection's size and a memory budget (``--index auto``).

The rule, for N vectors of D dimensions and a budget of B bytes that the index may occupy while
searching (the process adds its own: Python, the models, the ids):

1. **Exact** (``Flat``) while N <= 200,000 and the raw vectors (4·N·D bytes) fit in B: exact search
   is fast at that size and needs no training.
2. Otherwise an **inverted file** with ``nlist`` = the power of two nearest to 4·sqrt(N) lists
   (at least 64, at most 2^18, and at most N/39 so k-means has 39 points per centroid). From
   2^14 lists on, the coarse quantizer is an HNSW graph (``IVF<n>_HNSW32``), whose search does not
   grow with the number of lists. The quantizer takes nlist·D·4 bytes (plus 32 links per list).
3. Each vector may then use ``per_vector`` = (B - quantizer) / N - 8 bytes (the 8 are its id in the
   inverted list), which picks the codes:

   - 4·D bytes or more: ``IVF<n>,Flat``, exact scores within the probed lists;
   - less: product quantization with 4-bit codes searched by FAISS's SIMD fast scan,
     ``IVF<n>,PQ<m>x4fs`` (m/2 bytes a vector), the largest m with 4 to 16 dimensions per
     sub-quantizer that fits. Fast scan searches about 20x faster than 8-bit PQ or SQ8 codes
     here and trains in seconds (8-bit PQ takes minutes on a CPU, OPQ longer), and refining
     (below) wins back what 4-bit codes lose.
   - When not even the smallest fits, the index cannot live in B and is **searched from disk**:
     ``IVF<n>,PQ<D/8>`` with 8-bit codes, whose inverted lists FAISS memory-maps (fast-scan lists
     cannot be), so a search reads only the lists it probes.

4. Compressed codes **refine**: a search fetches k x 10 candidates and re-scores them exactly from
   the stored float32 vectors (read from disk, only those rows), which restores most of the recall
   the codes lose.
5. Training uses min(N, max(40·nlist, 65,536)) vectors drawn at random: FAISS wants at least 39 per
   centroid, and PQ / OPQ train on up to 65,536.

Search breadth is :func:`mmrank.faiss_tools.default_nprobe` (a sixteenth of the lists). The rule
follows FAISS's guidelines ("Guidelines to choose an index" in the FAISS wiki) and autofaiss's idea
of fitting the codes to a memory budget; ``benchmarks/scale_bench.py`` measures what it gives.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from mmrank.errors import InputError

AUTO = "auto"
EXACT_LIMIT = 200_000
REFINE_FACTOR = 10
ID_BYTES = 8
HNSW_QUANTIZER_FROM = 1 << 14
_HNSW_LINKS = 32
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"4GB"``, ``"512MB"``, ``"1.5g"`` or a number of bytes as bytes (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE.fullmatch(str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"A memory size looks like 4GB, 512MB or 1.5GB; got {text!r}.")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: float) -> str:
    """Bytes for people: ``1.5 GB``, ``640 MB``."""
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


@dataclass(frozen=True)
class IndexPlan:
    """The index :func:`plan_index` chose and why: its FAISS ``factory``, the candidates a search
    re-scores exactly (``refine`` x k, 0 for none), whether its lists are searched from disk,
    the vectors it trains on and the bytes it is expected to occupy."""

    factory: str
    nlist: int
    code_bytes: int
    refine: int
    on_disk: bool
    train_size: int
    index_bytes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        parts = [self.factory, f"{format_size(self.index_bytes)} of index"]
        if self.refine:
            parts.append(f"re-scoring {self.refine} x k candidates exactly")
        if self.on_disk:
            parts.append("searched from disk")
        return ", ".join(parts)


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: the power of two nearest to 4·sqrt(count), between 64
    and 2^18, and no more than count / 39."""
    target = 4 * math.sqrt(max(count, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    nlist = min(max(nlist, 64), 1 << 18)
    while nlist > 1 and nlist * 39 > count:
        nlist //= 2
    return nlist


def training_size(count: int, nlist: int = 1) -> int:
    """Vectors to train on: 40 per list, and at least 65,536 (what PQ and OPQ use), at most ``count``."""
    return min(count, max(40 * nlist, 1 << 16))


def plan_index(count: int, dim: int, budget: int | str) -> IndexPlan:
    """The index for ``count`` vectors of ``dim`` dimensions under a memory ``budget`` (bytes or
    a size such as ``"4GB"``), by the rule in this module's docstring."""
    budget = parse_size(budget)
    if count < 0 or dim < 1:
        raise InputError(f"plan_index needs a count >= 0 and a positive dimension; got {count} and {dim}.")
    raw = 4 * count * dim
    if count <= EXACT_LIMIT and raw <= budget:
        return IndexPlan("Flat", 0, 4 * dim, 0, False, 0, raw)
    nlist = nlist_for(count)
    hnsw = nlist >= HNSW_QUANTIZER_FROM
    quantizer = nlist * dim * 4 + (nlist * _HNSW_LINKS * 2 * 4 if hnsw else 0)
    ivf = f"IVF{nlist}_HNSW{_HNSW_LINKS}" if hnsw else f"IVF{nlist}"
    per_vector = (budget - quantizer) / max(count, 1) - ID_BYTES
    on_disk = False
    if per_vector >= 4 * dim:
        factory, code, refine = f"{ivf},Flat", 4 * dim, 0
    else:
        fitting = [m for m in pq_sizes(dim) if m / 2 <= per_vector]
        refine = REFINE_FACTOR
        if fitting:
            code = max(fitting) // 2
            factory = f"{ivf},PQ{max(fitting)}x4fs"
        else:
            on_disk = True
            code = max([m for m in range(1, dim // 8 + 1) if dim % m == 0] or [1])
            factory = f"{ivf},PQ{code}"
    return IndexPlan(factory, nlist, code, refine, on_disk, training_size(count, nlist),
                     quantizer + count * (code + ID_BYTES))


def pq_sizes(dim: int) -> list[int]:
    """The fast-scan PQ sizes (4-bit sub-quantizers, an even number of them) the rule considers for
    ``dim``: divisors of ``dim`` with 4 to 16 dimensions per sub-quantizer (fewer cost search time
    that refining makes up anyway), smallest first."""
    return [m for m in range(2, dim // 4 + 1, 2) if dim % m == 0 and 4 <= dim // m <= 16]
