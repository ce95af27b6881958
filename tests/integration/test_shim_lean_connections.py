"""The queue source's lean connections: takers' and the shared ack connection."""

from __future__ import annotations

import asyncio

import redis
from support.shim_doubles import queue_source, seed_tasks

from rhailambda.protocol import KeyLayout
from rhailambda.resp import parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.shim.health import Health

L = KeyLayout()


def test_a_cancelled_ack_does_not_lose_the_others_sharing_its_connection(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Twenty acks in flight on the shared connection; one is cancelled, which closes
    it under the others: they are sent again on a new one and every id is acked."""
    ids = [f"t{i}" for i in range(40)]
    seed_tasks(redis_client, L, "w1", ids)

    async def scenario() -> int:
        client = AsyncRespClient(parse_url(redis_url))
        health = Health(redis_url=redis_url, min_delay_s=0.001)
        source = queue_source(client, redis_url, health=health)
        try:
            taken = (await source.take("w1", 40, block_s=0)).items
            assert len(taken) == 40
            batches = [taken[i : i + 2] for i in range(0, 40, 2)]
            await source.ack("w1", batches[0])  # the shared connection is open
            acks = [asyncio.create_task(source.ack("w1", batch)) for batch in batches[1:]]
            await asyncio.sleep(0)  # each ack has written its request and waits
            acks[6].cancel()  # batches[7]
            await asyncio.gather(*acks, return_exceptions=True)
            assert acks[6].cancelled()
            return health.outages
        finally:
            source.close()  # and its client
            await client.aclose()

    outages = asyncio.run(scenario())
    assert outages == 1, "the others' requests died with the connection and were sent again"
    inflight = redis_client.lrange(L.inflight("w1", "s1"), 0, -1)
    assert set(inflight) <= {"t14", "t15"}, "only the cancelled batch may still be in flight"
