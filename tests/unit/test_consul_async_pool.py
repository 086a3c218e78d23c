"""consul_async.Pool against a real loopback HTTP/1.1 server: connections, statuses, bodies, the token."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest

from basenode.config import ConsulHTTP
from basenode.consul_async import ConsulException, Pool
from tests.unit.fake_consul import FakeConsul

TOKEN = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    yield fake
    fake.close()


def run(coroutine: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coroutine())


async def until(probe: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pool_for(consul: FakeConsul, max_connections: int = 4, **kwargs: Any) -> Pool:
    return Pool(ConsulHTTP(addr=consul.addr, **kwargs.pop("http", {})), max_connections, **kwargs)


def test_an_answer_carries_its_status_index_and_decoded_body(consul):
    consul.set("/v1/kv/app/x", [{"Key": "app/x", "Value": None}])

    async def scenario():
        pool = pool_for(consul)
        try:
            return await pool.get("/v1/kv/app/x")
        finally:
            await pool.close()

    answer = run(scenario)
    assert (answer.status, answer.index, answer.body) == (
        200,
        consul.index,
        [{"Key": "app/x", "Value": None}],
    )


def test_requests_one_after_another_reuse_one_keep_alive_connection(consul):
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul)
        try:
            for _ in range(5):
                await pool.get("/v1/kv/a")
            return pool.counters
        finally:
            await pool.close()

    counters = run(scenario)
    assert counters.requests == 5 and counters.connections_made == 1
    assert consul.connections == 1


def test_never_more_than_max_connections_are_open_and_the_waiting_requests_still_get_answers(consul):
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, max_connections=2)
        try:
            reads = [
                asyncio.ensure_future(pool.get("/v1/kv/a", [("index", str(consul.index))], 60))
                for _ in range(6)
            ]
            await until(lambda: consul.in_flight["/v1/kv/a"] == 2, "two blocking reads on the agent")
            assert pool.counters.open == 2 and consul.open == 2
            consul.set("/v1/kv/a", [{"Key": "a", "Value": None}])  # every blocking read returns
            answers = await asyncio.gather(*reads)
            return answers, pool.counters
        finally:
            await pool.close()

    answers, counters = run(scenario)
    assert len(answers) == 6 and all(a.body == [{"Key": "a", "Value": None}] for a in answers)
    assert counters.peak_open == 2 and consul.peak_open == 2
    assert consul.most_in_flight["/v1/kv/a"] == 2


def test_a_404_is_an_answer_with_no_body_not_an_error(consul):
    async def scenario():
        pool = pool_for(consul)
        try:
            return await pool.get("/v1/kv/missing")
        finally:
            await pool.close()

    answer = run(scenario)
    assert answer.status == 404 and answer.body is None


def test_an_error_status_is_a_consul_exception_naming_the_status_and_the_pool_goes_on(consul):
    consul.statuses["/v1/health/service/web"] = 500
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, max_connections=1)
        try:
            with pytest.raises(ConsulException) as failed:
                await pool.get("/v1/health/service/web")
            after = await pool.get("/v1/kv/a")
            return str(failed.value), after
        finally:
            await pool.close()

    message, after = run(scenario)
    assert "500" in message and "/v1/health/service/web" in message
    assert after.body == [{"Key": "a"}]


def test_a_chunked_answer_is_read_whole(consul):
    consul.chunked = True
    body = [{"Key": f"app/{i}", "Value": None} for i in range(50)]
    consul.set("/v1/kv/app/", body)

    async def scenario():
        pool = pool_for(consul)
        try:
            first = await pool.get("/v1/kv/app/", [("recurse", "true")])
            second = await pool.get("/v1/kv/app/", [("recurse", "true")])
            return first, second, pool.counters
        finally:
            await pool.close()

    first, second, counters = run(scenario)
    assert first.body == body and second.body == body
    assert counters.connections_made == 1  # the end of a chunked answer is found: the connection is kept


def test_the_token_travels_in_the_x_consul_token_header_never_in_the_url(consul):
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, http={"token": TOKEN})
        try:
            await pool.get("/v1/kv/a", [("index", "1")], 5)
        finally:
            await pool.close()

    run(scenario)
    (request,) = consul.reads("/v1/kv/a")
    assert request.headers["x-consul-token"] == TOKEN
    assert TOKEN not in request.target and request.params == {"index": "1"}


def test_no_token_sends_no_token_header(consul):
    async def scenario():
        pool = pool_for(consul)
        try:
            await pool.get("/v1/kv/a")
        finally:
            await pool.close()

    run(scenario)
    (request,) = consul.reads("/v1/kv/a")
    assert "x-consul-token" not in request.headers


def test_an_agent_that_never_answers_is_a_timeout_and_frees_the_connection(consul):
    consul.silent.add("/v1/kv/hung")
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, max_connections=1, timeout=0.2)
        try:
            with pytest.raises(ConsulException, match="no answer within"):
                await pool.get("/v1/kv/hung")
            return await pool.get("/v1/kv/a")  # the one connection's slot was given back
        finally:
            await pool.close()

    assert run(scenario).body == [{"Key": "a"}]


def test_a_blocking_read_may_last_longer_than_the_plain_timeout_its_wait_plus_jitter(consul):
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, timeout=0.1)
        try:
            # Nothing moves: the agent answers when the wait runs out, past the plain timeout.
            return await pool.get("/v1/kv/a", [("index", str(consul.index)), ("wait", "400ms")], 0.4)
        finally:
            await pool.close()

    answer = run(scenario)
    assert answer.status == 200 and answer.index == consul.index


def test_an_agent_that_refuses_connections_is_a_consul_exception_naming_the_address():
    async def scenario():
        pool = Pool(ConsulHTTP(addr="127.0.0.1:1"), max_connections=1)
        with pytest.raises(ConsulException, match=re.escape("cannot connect to 127.0.0.1:1")):
            await pool.get("/v1/kv/a")
        return pool.counters.open

    assert run(scenario) == 0


def test_a_request_cancelled_while_waiting_for_a_connection_gives_up_its_place(consul):
    consul.set("/v1/kv/a", [{"Key": "a"}])

    async def scenario():
        pool = pool_for(consul, max_connections=1)
        try:
            holder = asyncio.ensure_future(pool.get("/v1/kv/a", [("index", str(consul.index))], 60))
            await until(lambda: consul.in_flight["/v1/kv/a"] == 1, "the blocking read")
            waiting = asyncio.ensure_future(pool.get("/v1/kv/a"))
            await asyncio.sleep(0)
            waiting.cancel()
            consul.wake()
            await holder
            return await pool.get("/v1/kv/a"), pool.counters
        finally:
            await pool.close()

    answer, counters = run(scenario)
    assert answer.body == [{"Key": "a"}] and counters.peak_open == 1
