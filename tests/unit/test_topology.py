"""The routing core of both clients, without a server: plans, redirects, slots."""

from __future__ import annotations

from rhailambda.errors import RedisResponseError
from rhailambda.redis_url import Address
from rhailambda.slots import SLOTS, Node, hashed_part, key_home, key_slot, tag_for
from rhailambda.topology import Exchange, Topology

A, B = Node("10.0.0.1", 7000), Node("10.0.0.2", 7001)


def _cluster(owner_of_all: Node = A) -> Topology:
    topology = Topology(Address(host=A.host, port=A.port, cluster="yes"))
    topology.learn([[0, SLOTS - 1, [owner_of_all.host, owner_of_all.port, "id"]]])
    return topology


def test_known_slots_and_tags() -> None:
    assert key_slot("123456789") == 12739  # the CRC16 check value of the cluster spec
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert hashed_part("a{}b") == b"a{}b", "an empty tag hashes the whole key"
    for key in ("rhailib:w1", "rhailib:{t}", "rhailib:a}b", "rhailib:{}x", "é{"):
        assert key_slot(f"ours:{tag_for(key)}:x") == key_slot(key), key


def test_no_two_keys_share_a_home_and_each_home_keeps_its_keys_slot() -> None:
    """Our keys of two protocol keys never coincide: two tasks of one hash tag (the
    client's slot-tagged ids), two keys whose ``}`` gets them the same short slot tag."""
    odd = "rhailib:a}b"
    twin = next(k for i in range(200_000) if key_slot(k := f"rhailib:x}}{i}") == key_slot(odd))
    keys = ["rhailib:w1", "rhailib:{w1}6f1c", "rhailib:{w1}9a2e", "rhailib:reply:{w1}6f1c",
            odd, twin, "rhailib:{}x", "é{"]  # fmt: skip
    homes = [key_home(k) for k in keys]
    assert len(set(homes)) == len(keys)
    assert tag_for(odd) == tag_for(twin) and tag_for(keys[1]) == tag_for(keys[2])  # why
    for key, home in zip(keys, homes, strict=True):
        assert key_slot(f"rhailambda:done:{home}") == key_slot(key), key
    assert key_home("rhailib:w1") == "{rhailib:w1}", "the usual key's home is as before"


def test_one_master_of_every_slot_takes_everything_until_a_slot_moves() -> None:
    topology = _cluster()
    assert topology.plan([["GET", "a"], ["GET", "b"]]) == {A: [0, 1]}
    topology.map.moved(key_slot("b"), B)  # type: ignore[union-attr]
    assert topology.plan([["GET", "a"], ["GET", "b"]]) == {A: [0], B: [1]}


def test_a_keyless_command_travels_with_the_next_keyed_one() -> None:
    topology = _cluster()
    topology.map.moved(key_slot("b"), B)  # type: ignore[union-attr]
    plan = topology.plan([["SCRIPT", "LOAD", "x"], ["EVAL", "x", 1, "b"], ["GET", "a"], ["EXEC"]])
    assert plan == {B: [0, 1], A: [2, 3]}


def test_moved_and_ask_are_followed_and_other_replies_kept() -> None:
    topology = _cluster()
    commands = [["GET", "a"], ["GET", "b"], ["GET", "c"]]
    exchange = Exchange(topology, commands)
    assert exchange.rounds_left()
    ((node, indexes, send),) = exchange.sends()
    moved = RedisResponseError(f"MOVED {key_slot('b')} {B.host}:{B.port}")
    ask = RedisResponseError(f"ASK {key_slot('c')} {B.host}:{B.port}")
    exchange.absorb(node, indexes, ["1", moved, ask])
    assert topology.stale, "a MOVED asks for a fresh slot map"
    assert exchange.rounds_left()
    ((node, indexes, send),) = exchange.sends()
    assert node == B and indexes == [1, 2]
    assert send == [["GET", "b"], ["ASKING"], ["GET", "c"]], "ASKING only before the ASK"
    exchange.absorb(node, indexes, ["2", "OK", "3"])
    assert not exchange.rounds_left()
    assert exchange.replies == ["1", "2", "3"]


def test_a_command_redirected_forever_ends_with_its_error() -> None:
    topology = _cluster()
    exchange = Exchange(topology, [["GET", "a"]])
    rounds = 0
    while exchange.rounds_left():
        rounds += 1
        for node, indexes, _ in exchange.sends():
            exchange.absorb(node, indexes, [RedisResponseError("TRYAGAIN slot moving")])
        assert exchange.pause
    assert 1 < rounds < 100
    assert isinstance(exchange.replies[0], RedisResponseError)


def test_a_standalone_server_is_learnt_from_its_refusal() -> None:
    topology = Topology(Address())
    topology.learn(RedisResponseError("ERR This instance has cluster support disabled"))
    assert topology.cluster is False and topology.known
