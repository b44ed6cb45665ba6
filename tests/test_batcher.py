"""The dynamic batcher: what arrives together runs together, in order, and no request can fail or
stall the others."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mmrank.batcher import DynamicBatcher
from mmrank.errors import InputError


class Doubler:
    """A batch function that doubles numbers, remembers its batches, and fails on "bad"."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause, self.seen = pause, []

    def __call__(self, items):
        self.seen.append(list(items))
        time.sleep(self.pause)
        if "bad" in items:
            raise InputError("bad item")
        return [2 * item for item in items]


def test_requests_that_arrive_together_run_together_in_order():
    run = Doubler(pause=0.02)

    async def main():
        batcher = DynamicBatcher(run, max_batch=4, max_wait_ms=20)
        results = await asyncio.gather(*(batcher.submit(n) for n in range(10)))
        await batcher.close()
        return results, batcher.batches

    results, batches = asyncio.run(main())
    assert results == [2 * n for n in range(10)]
    assert sum(batches) == 10 and max(batches) == 4 and len(batches) < 10
    assert [item for batch in run.seen for item in batch] == list(range(10))


def test_max_batch_one_turns_batching_off():
    async def main():
        batcher = DynamicBatcher(Doubler(), max_batch=1)
        results = await asyncio.gather(*(batcher.submit(n) for n in range(5)))
        return results, batcher.batches

    assert asyncio.run(main()) == ([0, 2, 4, 6, 8], [1, 1, 1, 1, 1])


def test_one_bad_request_never_fails_the_others_in_its_batch():
    run = Doubler()

    async def main():
        batcher = DynamicBatcher(run, max_batch=8, max_wait_ms=20)
        return await asyncio.gather(*(batcher.submit(n) for n in (1, "bad", 3)), return_exceptions=True)

    good, bad, other = asyncio.run(main())
    assert (good, other) == (2, 6)
    assert isinstance(bad, InputError) and str(bad) == "bad item"
    assert run.seen == [[1, "bad", 3], [1], ["bad"], [3]]  # the batch failed, then one at a time


def test_a_caller_that_gives_up_does_not_stall_the_queue():
    started = threading.Event()

    def slow(items):
        started.set()
        time.sleep(0.2)
        return list(items)

    async def main():
        batcher = DynamicBatcher(slow, max_batch=1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit("first"), 0.05)
        waiting = asyncio.ensure_future(batcher.submit("given up"))  # queued behind "first", then cancelled
        await asyncio.sleep(0.01)
        waiting.cancel()
        answer = await asyncio.wait_for(batcher.submit("next"), 2)
        return answer, batcher.batches

    answer, batches = asyncio.run(main())
    assert answer == "next" and started.is_set()
    assert batches == [1, 1]  # "first" ran, "given up" was left out, "next" ran


def test_close_finishes_what_is_queued():
    async def main():
        batcher = DynamicBatcher(Doubler(pause=0.01), max_batch=2, max_wait_ms=1)
        futures = [asyncio.ensure_future(batcher.submit(n)) for n in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        return [future.result() for future in futures]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(("options", "message"), [({"max_batch": 0}, "max_batch must be at least 1"),
                                                  ({"max_wait_ms": -1}, "max_wait_ms must be at least 0")])
def test_bad_options_are_named(options, message):
    with pytest.raises(InputError, match=message):
        DynamicBatcher(Doubler(), **options)


def test_a_request_alone_runs_at_once_without_waiting_for_company():
    async def main():
        batcher = DynamicBatcher(Doubler(), max_batch=32, max_wait_ms=5_000)
        started = time.perf_counter()
        result = await batcher.submit(21)
        return result, time.perf_counter() - started

    result, seconds = asyncio.run(main())
    assert result == 42 and seconds < 1.0  # far less than max_wait_ms: nothing else was waiting
