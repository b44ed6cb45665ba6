"""SuperGlobal refinement benchmark: time per query, and the achieved FLOP rate as a fraction of a
plain torch batched matmul of the same total size, measured in the same run (target: >= 30% on CPU).

    python benchmarks/superglobal_bench.py                    # CPU: Q=70, M=400, K=9, D=2048
    python benchmarks/superglobal_bench.py --device cuda      # GPU: adds Q=1000 over an N=1M first stage

Useful FLOPs per query: the M x M similarity (2 M^2 D), the neighbour sums (2 (K+1) M D) and the two
scorings (4 M D). The matmul reference multiplies (Q, M, D) by (Q, D, M): the similarity alone, the
bulk of the work. On CUDA the first stage (exact search of Q queries over N vectors: matmul + top-M
through VectorIndex's torch backend) is timed too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timing import timed  # noqa: E402

import torch  # noqa: E402

from mmrank.rerankers.superglobal import superglobal_rerank  # noqa: E402


def unit(shape: tuple[int, ...], device: str, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=generator).to(device)
    return torch.nn.functional.normalize(x, dim=-1)


def refinement_flops(m: int, k: int, d: int) -> float:
    return 2 * m * m * d + 2 * (k + 1) * m * d + 4 * m * d


def bench_refinement(queries: int, n: int, m: int, k: int, d: int, device: str, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    database = unit((n, d), device, generator)
    query = unit((queries, d), device, generator)
    ranks = torch.randint(0, n, (queries, m), generator=generator).to(device)
    seconds = timed(lambda: superglobal_rerank(query, database, ranks, m=m, k=k), device, repeats)
    candidates = database[ranks]
    matmul = timed(lambda: torch.bmm(candidates, candidates.transpose(1, 2)), device, repeats)
    rate = queries * refinement_flops(m, k, d) / seconds
    matmul_rate = queries * 2 * m * m * d / matmul
    return {"ms/query": 1000 * seconds / queries, "GFLOP/s": rate / 1e9,
            "matmul GFLOP/s": matmul_rate / 1e9, "fraction": rate / matmul_rate}


def bench_first_stage(queries: int, n: int, m: int, d: int, device: str, repeats: int) -> float:
    """ms/query of exact top-M search of ``queries`` vectors over ``n`` through VectorIndex."""
    from mmrank.index import VectorIndex

    generator = torch.Generator().manual_seed(1)
    database = unit((n, d), "cpu", generator).numpy()
    query = unit((queries, d), "cpu", generator).numpy()
    index = VectorIndex(d, "Flat", device=device, backend="torch")
    index.add([str(i) for i in range(n)], database)
    return 1000 * timed(lambda: index.search(query, m), device, repeats) / queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--m", type=int, default=400)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=5000, help="database size for the CPU refinement run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    rows = [("refinement", args.queries, args.n,
             bench_refinement(args.queries, args.n, args.m, args.k, args.dim, args.device, args.repeats))]
    if args.device.startswith("cuda"):
        rows.append(("refinement", 1000, 1_000_000,
                     bench_refinement(1000, 1_000_000, args.m, args.k, args.dim, args.device, args.repeats)))
    print(f"M={args.m} K={args.k} D={args.dim}")
    print(f"{'stage':<12}{'Q':>6}{'N':>10}{'ms/query':>10}{'GFLOP/s':>10}{'matmul GFLOP/s':>16}{'fraction':>10}")
    for stage, queries, n, result in rows:
        print(f"{stage:<12}{queries:>6}{n:>10}{result['ms/query']:>10.2f}{result['GFLOP/s']:>10.1f}"
              f"{result['matmul GFLOP/s']:>16.1f}{result['fraction']:>10.0%}")
    if args.device.startswith("cuda"):
        search = bench_first_stage(1000, 1_000_000, args.m, args.dim, args.device, args.repeats)
        print(f"{'search':<12}{1000:>6}{1_000_000:>10}{search:>10.2f}   (exact top-{args.m}, torch backend)")


if __name__ == "__main__":
    main()
