"""Dynamic batching for a service: requests that arrive together are handled together.

A :class:`DynamicBatcher` hands submitted items to ``run_batch`` in a worker thread, one batch at
a time (so the models are never asked twice at once). A batch is what waited while the previous
one ran, up to ``max_batch`` items; when it holds more than one, it waits up to ``max_wait_ms``
for more to fill it. A request that finds nothing else waiting runs at once: batching costs a lone
request nothing, and under load the queue fills while the models work. Each submitter awaits
its own result. A request whose caller gave up (a timeout, a client that disconnected) is left out
of the next batch; when a batch fails as a whole, its items are run one at a time, so one bad
request never fails the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from mmrank.errors import InputError

Item = TypeVar("Item")
Result = TypeVar("Result")
logger = logging.getLogger("mmrank")


class DynamicBatcher(Generic[Item, Result]):
    """Batches the items given to :meth:`submit` for ``run_batch`` (items in, one result per item
    out, in order). ``max_batch=1`` turns batching off."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, executor: ThreadPoolExecutor | None = None) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}.")
        if max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be at least 0, got {max_wait_ms}.")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="mmrank-batch")
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # the size of every batch run, for tests and statistics

    async def submit(self, item: Item) -> Result:
        """The result for ``item``, once the batch it joined has run (its exception, if it failed)."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def close(self) -> None:
        """Finish the batches already queued, then stop the worker."""
        if self._worker is not None and not self._worker.done():
            await self._queue.join()
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def _serve(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():  # whatever waits already
                batch.append(queue.get_nowait())
            deadline = time.monotonic() + self.max_wait
            while 1 < len(batch) < self.max_batch:  # others are coming: wait a little for more
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                await self._run([(item, future) for item, future in batch if not future.done()])
            finally:
                for _ in batch:
                    queue.task_done()

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        """Run one batch in the worker thread and hand out its results; if it fails as a whole,
        run its items one at a time so each gets its own result or error."""
        if not batch:
            return
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]
        self.batches.append(len(items))
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, items)
        except Exception as error:  # noqa: BLE001 (handed to the callers, who report it)
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
            else:
                for single in batch:
                    await self._run([single])
            return
        for (_, future), result in zip(batch, results):
            _settle(future, result=result)


def _settle(future: asyncio.Future, *, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the caller stopped waiting (timeout, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
