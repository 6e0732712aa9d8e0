"""Dynamic batching with a bounded queue: many concurrent requests, one Runner call per batch.

The first request of a batch waits at most `max_wait_ms` for company; a batch never exceeds
`max_batch_size`. Inference runs on one worker thread (off the event loop) so the server keeps
accepting and answering health checks while the model computes. The queue is bounded: when
`max_queue` images are waiting, `submit` raises `QueueFull` at once (the server answers 429),
instead of letting memory and latency grow without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The bounded queue is full; retry later."""


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitgender-infer")
        self.in_flight = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Logits for one preprocessed image (3, H, W)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(pixels, future))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await future

    async def _collect(self) -> list[_Item]:
        first = await self._queue.get()
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.in_flight = len(batch)
            began = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._executor, self._run, np.stack([i.pixels for i in batch]))
            except Exception as exc:  # noqa: BLE001 - the error belongs to the requests, not the loop
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                for item, row in zip(batch, logits, strict=False):
                    if not item.future.done():
                        item.future.set_result(row)
            finally:
                self._on_batch(len(batch), time.perf_counter() - began)
                self.in_flight = 0
                for _ in batch:
                    self._queue.task_done()

    async def drain(self, timeout: float = 30.0) -> None:
        """Finish everything queued (graceful shutdown), then stop the worker."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                pass
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)
