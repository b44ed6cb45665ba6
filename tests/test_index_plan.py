"""index_plan: the rule that turns a count, a dimension and a memory budget into a FAISS index."""

from __future__ import annotations

import faiss
import pytest

from mmrank.errors import InputError
from mmrank.index_plan import format_size, nlist_for, parse_size, plan_index, pq_sizes, training_size


@pytest.mark.parametrize(("text", "size"), [("4GB", 4 << 30), ("512mb", 512 << 20), ("1.5G", 3 << 29),
                                            ("64 KB", 64 << 10), ("1000", 1000), (2048, 2048)])
def test_sizes_read_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4XB", "-1GB", "0", "GB", True])
def test_a_size_that_is_not_one_says_what_one_looks_like(text):
    with pytest.raises(InputError, match="looks like 4GB"):
        parse_size(text)


def test_sizes_print_for_people():
    assert [format_size(s) for s in (900, 2048, 640 << 20, 3 << 29)] == ["900 B", "2 KB", "640 MB", "1.5 GB"]


def test_lists_grow_with_the_square_root_within_bounds():
    # 4·sqrt(N) rounded to a power of two: 1M -> 4000 -> 4096; 5M -> 8944 -> 8192; 1B -> 126,491 -> 131,072.
    assert [nlist_for(n) for n in (1_000_000, 5_000_000, 10**9)] == [4096, 8192, 131072]
    assert nlist_for(10**13) == 1 << 18  # capped
    assert nlist_for(300) == 4  # 39 training points per list: 8 lists would need 312
    assert training_size(1_000_000, 4096) == 163840 and training_size(1000, 4096) == 1000
    assert training_size(10**6, 16) == 65536


def test_small_collections_that_fit_stay_exact():
    plan = plan_index(200_000, 512, "1GB")
    assert (plan.factory, plan.refine, plan.on_disk, plan.index_bytes) == ("Flat", 0, False, 200_000 * 2048)


def test_codes_follow_the_budget():
    # 1M x 512: quantizer 4096 x 512 x 4 = 8 MiB. 4 GiB leaves > 2048 bytes a vector: exact codes.
    assert plan_index(1_000_000, 512, "4GB").factory == "IVF4096,Flat"
    # 1 GiB leaves (1 GiB - 8 MiB) / 1M - 8 = 1057 bytes: the largest fast-scan PQ, 128 x 4 bits.
    plan = plan_index(1_000_000, 512, "1GB")
    assert (plan.factory, plan.code_bytes, plan.refine, plan.on_disk) == ("IVF4096,PQ128x4fs", 64, 10, False)
    assert plan.index_bytes == (8 << 20) + 1_000_000 * (64 + 8)
    # 32 MiB leaves (32 - 8) MiB / 1M - 8 = 17.2 bytes: PQ32x4fs (16 bytes); 30 MiB leaves 15.1.
    assert plan_index(1_000_000, 512, "32MB").factory == "IVF4096,PQ32x4fs"
    # 20 MiB leaves 4.6 bytes, less than the smallest code: 8-bit PQ64 searched from disk.
    plan = plan_index(1_000_000, 512, "20MB")
    assert (plan.factory, plan.code_bytes, plan.on_disk) == ("IVF4096,PQ64", 64, True)


def test_many_lists_take_an_hnsw_quantizer():
    plan = plan_index(100_000_000, 512, "4GB")
    assert plan.factory == "IVF32768_HNSW32,PQ64x4fs" and plan.train_size == 40 * 32768


def test_fast_scan_sizes_keep_4_to_16_dimensions_per_code():
    assert pq_sizes(512) == [32, 64, 128] and pq_sizes(768) == [48, 64, 96, 128, 192]
    assert pq_sizes(100) == [10, 20] and pq_sizes(7) == []


@pytest.mark.parametrize(("count", "dim", "budget"), [(1_000_000, 512, "1GB"), (1_000_000, 512, "20MB"),
                                                      (300, 16, "1KB"), (5000, 100, "64KB"), (300, 7, "1KB")])
def test_every_plan_is_a_factory_faiss_builds(count, dim, budget):
    plan = plan_index(count, dim, budget)
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    assert index.d == dim and plan.train_size <= count


def test_a_plan_describes_itself():
    assert plan_index(1_000_000, 512, "20MB").describe() == (
        "IVF4096,PQ64, 76.7 MB of index, re-scoring 10 x k candidates exactly, searched from disk")
    assert plan_index(10, 4, "1GB").to_dict()["factory"] == "Flat"
