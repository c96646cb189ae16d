"""Micro-batching: the images of concurrent requests run through the engine together.

Requests put their decoded images in a queue and wait; one worker takes the first image
that arrives, gathers more until it has `max_batch` or `max_wait_ms` has passed since
that first one, and runs them as one batch in the engine's own thread (engines such as
LiteRT's interpreter are not thread-safe; one thread also keeps the event loop free).
Under load, batches fill up and throughput approaches the engine's batch throughput; a
lone request waits at most `max_wait_ms` more than it would alone.

Other work on the model (Grad-CAM) shares the engine's thread as tasks: at most
`max_tasks` waiting or running, and one at a time in the thread, so that a batch waits
behind one task at most however many are waiting.
"""

import asyncio
import concurrent.futures
import time

import numpy as np


class QueueFull(Exception):
    """More images are waiting than the queue takes; the client should retry later."""


class MicroBatcher:
    def __init__(self, run, max_batch=32, max_wait_ms=5.0, max_queue=256, on_batch=None,
                 max_tasks=4):
        """
        Args:
            run: the engine: a function of an `(n, size, size, 3)` uint8 array that returns
                `(n, classes)` probabilities.
            max_queue: the most images waiting at once; beyond it `submit` raises QueueFull.
            on_batch: an optional callable, called with each batch's size and seconds.
            max_tasks: the most tasks (`run_task`) waiting or running at once; beyond it
                `run_task` raises QueueFull.
        """
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.max_tasks = max_tasks
        self._tasks = 0
        self._task_turn = asyncio.Lock()  # one task at a time in the engine's thread
        self.engine_thread = concurrent.futures.ThreadPoolExecutor(1, "smallcnn-engine")
        self._queue = None
        self._waiting = 0
        self._worker = None

    async def start(self):
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def stop(self):
        """Finishes every image already queued, then stops."""
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        self.engine_thread.shutdown(wait=True)

    def in_engine(self, function, *args):
        """Runs `function(*args)` in the engine's thread (for other work on the model, such
        as Grad-CAM), awaitable."""
        return asyncio.get_running_loop().run_in_executor(self.engine_thread, function, *args)

    async def run_task(self, function, *args, ready=None):
        """`function(*args)` in the engine's thread, after the tasks before it; first, if
        given, `await ready()` (outside the engine's thread: what the task needs loaded).

        Raises:
            QueueFull: `max_tasks` tasks are already waiting or running.
        """
        if self._tasks >= self.max_tasks:
            raise QueueFull(f"{self._tasks} tasks are waiting or running (the most is "
                            f"{self.max_tasks})")
        self._tasks += 1
        try:
            if ready is not None:
                await ready()
            async with self._task_turn:
                return await self.in_engine(function, *args)
        finally:
            self._tasks -= 1

    async def submit(self, images):
        """The probabilities of `images` (a list of `(size, size, 3)` arrays), in order."""
        if self._waiting + len(images) > self.max_queue:
            raise QueueFull(f"{self._waiting} images are waiting (the most is {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        self._waiting += len(images)
        for image in images:
            future = loop.create_future()
            futures.append(future)
            self._queue.put_nowait((image, future))
        return await asyncio.gather(*futures)

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch):
        pixels = np.stack([image for image, _ in batch])
        started = time.perf_counter()
        try:
            rows = await self.in_engine(self.run, pixels)
        except Exception as error:  # every waiting request gets the error, not a hang
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), row in zip(batch, rows):
                if not future.done():
                    future.set_result(row)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
        finally:
            self._waiting -= len(batch)
            for _ in batch:
                self._queue.task_done()
