"""QueryBatcher: a lone query is ranked at once, concurrent ones together, errors reach all."""

import asyncio

import pytest

from rayfp.cloud.batching import QueryBatcher


class Ranker:
    """Records each batch it ranks; answers each query with its double."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay_s, self.fail = delay_s, fail

    async def __call__(self, queries):
        self.batches.append(list(queries))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ValueError("the index is gone")
        return [2 * q for q in queries]


def test_a_lone_query_is_ranked_alone_and_at_once():
    async def scenario():
        ranker = Ranker()
        batcher = QueryBatcher(ranker, in_flight=lambda: 1)
        answers = [await batcher.submit(q) for q in (1, 2, 3)]
        return ranker, batcher, answers

    ranker, batcher, answers = asyncio.run(scenario())
    assert answers == [2, 4, 6]
    assert ranker.batches == [[1], [2], [3]]
    assert (batcher.batches, batcher.queries) == (3, 3)


def test_queries_in_flight_together_form_one_batch():
    async def scenario():
        ranker = Ranker()
        batcher = QueryBatcher(ranker, in_flight=lambda: 5, max_wait_s=1.0)
        answers = await asyncio.gather(*(batcher.submit(q) for q in range(5)))
        return ranker, answers

    ranker, answers = asyncio.run(scenario())
    assert answers == [0, 2, 4, 6, 8]  # each query gets its own answer
    assert ranker.batches == [[0, 1, 2, 3, 4]]


def test_arrivals_during_a_batch_form_the_next_and_the_batch_size_is_capped():
    async def scenario():
        ranker = Ranker(delay_s=0.05)
        in_flight = {"n": 1}
        batcher = QueryBatcher(ranker, in_flight=lambda: in_flight["n"], max_batch=3,
                               max_wait_s=0.01)
        first = asyncio.ensure_future(batcher.submit(100))  # alone: ranked at once
        await asyncio.sleep(0.01)
        in_flight["n"] = 8
        later = [asyncio.ensure_future(batcher.submit(q)) for q in range(7)]
        answers = await asyncio.gather(first, *later)
        return ranker, answers

    ranker, answers = asyncio.run(scenario())
    assert answers == [200, *range(0, 14, 2)]
    assert ranker.batches == [[100], [0, 1, 2], [3, 4, 5], [6]]


def test_one_bad_query_fails_alone_and_the_rest_of_its_batch_is_answered():
    class PicksyRanker(Ranker):
        async def __call__(self, queries):
            self.batches.append(list(queries))
            if 13 in queries:
                raise ValueError("query 13 is in no space here")
            return [2 * q for q in queries]

    async def scenario():
        ranker = PicksyRanker()
        batcher = QueryBatcher(ranker, in_flight=lambda: 3, max_wait_s=0.5)
        results = await asyncio.gather(*(batcher.submit(q) for q in (1, 13, 2)),
                                       return_exceptions=True)
        again = await asyncio.gather(*(batcher.submit(q) for q in (3, 4, 5)))
        return ranker, results, again

    ranker, results, again = asyncio.run(scenario())
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], ValueError) and "13" in str(results[1])
    assert ranker.batches[:4] == [[1, 13, 2], [1], [13], [2]]  # the batch, then each alone
    assert again == [6, 8, 10] and ranker.batches[4:] == [[3, 4, 5]]


def test_a_lone_query_that_fails_gets_its_error():
    async def scenario():
        batcher = QueryBatcher(Ranker(fail=True), in_flight=lambda: 1)
        with pytest.raises(ValueError, match="gone"):
            await batcher.submit(1)
        return batcher

    batcher = asyncio.run(scenario())
    assert batcher.batches == 1


def test_a_batch_does_not_wait_past_its_bound_for_queries_that_never_come():
    async def scenario():
        ranker = Ranker()
        batcher = QueryBatcher(ranker, in_flight=lambda: 10, max_wait_s=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await batcher.submit(4)
        return answer, loop.time() - started

    answer, waited = asyncio.run(scenario())
    assert answer == 8
    assert 0.02 <= waited < 1.0, waited  # the bound, then ranked (generous: a loaded CI box)


@pytest.mark.parametrize("max_batch", [1, 2])
def test_max_batch_splits_a_burst(max_batch):
    async def scenario():
        ranker = Ranker()
        batcher = QueryBatcher(ranker, in_flight=lambda: 4, max_batch=max_batch,
                               max_wait_s=0.5)
        await asyncio.gather(*(batcher.submit(q) for q in range(4)))
        return ranker

    ranker = asyncio.run(scenario())
    assert [len(b) for b in ranker.batches] == [max_batch] * (4 // max_batch)
