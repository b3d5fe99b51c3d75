"""Concurrent nearest-task queries ranked together, a lone query ranked at once.

A query in a batch of 8 costs the index about half of a lone one (the uint8 kernel
multiplies four queries per pass over the index; BENCHMARKS.md), so a loaded replica should
rank what has arrived together. Serve's @serve.batch does that, but it moves every query
through its queue and a task hop, also a lone one (a tenth of a query's time), and with
no wait it starts a batch with whatever had arrived that instant: after a batch, the next
requests are still being parsed on the event loop, so batches stayed small under load.

QueryBatcher knows how many queries are inside the replica (``in_flight``: counted from the
request's first byte, before its body is parsed):
- a query alone in the replica, with nothing ranking, is ranked at once in its own request's
  task;
- otherwise it waits in a queue, ranked as one batch once every query in flight has joined
  (the requests parsed right after a batch catch up), after ``max_wait_s`` at most, or at
  ``max_batch`` queries.

If a batch fails, each of its queries is ranked again alone, so one bad query gets its own
error and the others their answers.

The ranking function runs on the event loop (it blocks it, as @serve.batch's did): requests
that arrive meanwhile are parsed after it, and join the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Query = TypeVar("Query")
Answer = TypeVar("Answer")


class QueryBatcher(Generic[Query, Answer]):
    def __init__(self, rank: Callable[[Sequence[Query]], Awaitable[list[Answer]]], *,
                 in_flight: Callable[[], int], max_batch: int = 32,
                 poll_s: float = 0.0002, max_wait_s: float = 0.003) -> None:
        self._rank, self._in_flight = rank, in_flight
        self.max_batch, self.poll_s, self.max_wait_s = max_batch, poll_s, max_wait_s
        self._waiting: list[tuple[Query, asyncio.Future]] = []
        self._busy = False
        self.batches = 0  # batches ranked, lone queries included (for tests)
        self.queries = 0

    async def submit(self, query: Query) -> Answer:
        # One turn of the event loop first: requests handed to it meanwhile start (and are
        # counted) before this one decides it is alone. A request's body arrives without
        # suspending, so otherwise each ran alone up to here while the others had not started.
        await asyncio.sleep(0)
        if not self._busy and not self._waiting and self._in_flight() <= 1:
            self._busy = True
            try:
                return (await self._run([query]))[0]
            finally:
                self._busy = False
                self._start_draining()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((query, future))
        self._start_draining()
        return await future

    async def _run(self, queries: Sequence[Query]) -> list[Answer]:
        self.batches += 1
        self.queries += len(queries)
        return await self._rank(queries)

    def _start_draining(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _settle(self) -> None:
        """Wait (bounded) until every query in flight has joined: the requests parsed after
        the last batch. Queries whose answers are still being sent count too; the bound
        covers them."""
        deadline = time.perf_counter() + self.max_wait_s
        while (len(self._waiting) < min(self.max_batch, self._in_flight())
               and time.perf_counter() < deadline):
            await asyncio.sleep(self.poll_s)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._settle()
                batch = self._waiting[:self.max_batch]
                del self._waiting[:self.max_batch]
                try:
                    answers = await self._run([query for query, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        _settle_future(batch[0][1], exception=exc)
                        continue
                    # One bad query must not fail the others: each is ranked again alone
                    # and gets its own answer or error.
                    for query, future in batch:
                        try:
                            _settle_future(future, answer=(await self._run([query]))[0])
                        except Exception as alone:
                            _settle_future(future, exception=alone)
                else:
                    for (_, future), answer in zip(batch, answers):
                        _settle_future(future, answer=answer)
        finally:
            self._busy = False


def _settle_future(future: asyncio.Future, *, answer=None, exception=None) -> None:
    if future.done():  # the request went away (its client disconnected)
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(answer)
