"""Dynamic batching: one thread owns the model and runs the requests that arrive together as one batch.

Requests are awaited on the event loop but computed here, so a forward pass never blocks the server. A batch
starts with the oldest waiting request and takes every request already queued, then waits until that first
request is ``max_wait_s`` old for more, up to ``max_batch`` images; under load nothing waits, since the queue
fills while the previous batch runs. Without batching each request runs alone, in arrival order.

Attention maps are computed on this thread too (:meth:`ModelWorker.call`), between batches, so an attention
request never runs a pass concurrently with a batch: two passes at once would only fight for the same cores.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

_STOP = object()


@dataclass
class _Job:
    future: Future
    x: torch.Tensor | None = None  # (n, C, H, W): the images of one request
    fn: Callable[[], Any] | None = None  # or a call that needs the model to itself
    arrived: float = field(default_factory=time.monotonic)


class ModelWorker:
    """Runs ``forward`` ((n, C, H, W) -> (n, ...) on the CPU) on its own thread, batching concurrent requests.

    ``batches`` and ``images`` count the forward passes run and the images they held (for /health and tests).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32,
                 max_wait_s: float = 0.005, batching: bool = True):
        self.forward, self.max_batch, self.max_wait_s, self.batching = forward, max_batch, max_wait_s, batching
        self.batches = self.images = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vitkit-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def run(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)``, computed in a batch with whatever else arrives meanwhile."""
        return await self._submit(_Job(Future(), x=x))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the model's thread, alone (nothing else uses the model meanwhile)."""
        return await self._submit(_Job(Future(), fn=fn))

    async def _submit(self, job: _Job):
        if not self.alive:
            raise RuntimeError("the model worker is not running")
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)  # a cancelled request cancels its job

    def _loop(self) -> None:
        held = None  # a job taken from the queue that ended a batch: it runs next
        while True:
            job, held = held or self._queue.get(), None
            if job is _STOP:
                return
            if job.fn is not None:
                if job.future.set_running_or_notify_cancel():
                    _settle(job.future, job.fn)
                continue
            jobs, n = [job], len(job.x)
            deadline = job.arrived + self.max_wait_s
            while self.batching and n < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt.fn is not None:
                    held = nxt
                    break
                jobs.append(nxt)
                n += len(nxt.x)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        """One forward pass over the jobs' images (in chunks of ``max_batch``), each job given its rows."""
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip requests gone meanwhile
        if not jobs:
            return
        try:
            x = torch.cat([j.x for j in jobs])
            out = torch.cat([self.forward(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        except Exception as e:  # a bug or the device failing: every request of the batch gets the error
            for j in jobs:
                j.future.set_exception(e)
            return
        self.batches += -(-len(x) // self.max_batch)
        self.images += len(x)
        for j, rows in zip(jobs, out.split([len(j.x) for j in jobs])):
            j.future.set_result(rows)


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except Exception as e:
        future.set_exception(e)
