"""The clients' cluster routing against a real multi-master cluster (skipped elsewhere)."""

from __future__ import annotations

import pytest
import redis
from redis_cluster import ClusterUnderTest

from rhailambda.resp import RespClient, from_url
from rhailambda.slots import Node, key_slot


def _stale_map(client: RespClient, cluster: ClusterUnderTest, key: str) -> None:
    """Make ``client`` believe ``key``'s slot lives on another master (a missed move)."""
    assert client.cluster
    owner = cluster.node_for_key(key).port
    others = [m for m in cluster.masters() if m.port != owner]
    if not others:
        pytest.skip("needs a second master")
    other = others[0]
    client._topology.map.moved(key_slot(key), Node("127.0.0.1", other.port))  # type: ignore[union-attr]


def test_commands_follow_moved_from_a_stale_slot_map(
    redis_cluster: ClusterUnderTest, redis_url: str, redis_client: redis.RedisCluster
) -> None:
    with from_url(redis_url) as client:
        _stale_map(client, redis_cluster, "k1")
        assert client.round_trip([["INCR", "k1"], ["INCR", "k2"]]) == [1, 1]
    assert redis_client.get("k1") == "1", "the redirected command ran once"


def test_a_transaction_is_sent_again_whole_after_a_redirect(
    redis_cluster: ClusterUnderTest, redis_url: str, redis_client: redis.RedisCluster
) -> None:
    """Never command by command outside MULTI (they would run, then EXEC abort)."""
    with from_url(redis_url) as client:
        _stale_map(client, redis_cluster, "{t}a")
        got = client.pipeline([["INCR", "{t}a"], ["INCR", "{t}b"]], transaction=True)
    assert got == [1, 1]
    assert (redis_client.get("{t}a"), redis_client.get("{t}b")) == ("1", "1")
