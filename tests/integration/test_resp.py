"""The function's Redis client against a real redis-server (plain, AUTH, unix, TLS)."""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, free_port

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.resp import RespClient, from_url, parse_url


def test_replies_come_back_typed(resp_client: RespClient, redis_client: redis.Redis) -> None:
    redis_client.hset("h", mapping={"a": "1", "é": "ü"})
    assert resp_client.execute("PING") == "PONG"
    assert resp_client.execute("HGET", "h", "é") == "ü"
    assert resp_client.execute("HGET", "h", "none") is None
    assert resp_client.execute("HINCRBY", "h", "a", 2) == 3
    assert sorted(resp_client.execute("HKEYS", "h")) == ["a", "é"]


def test_invalid_utf8_is_replaced_not_fatal(
    resp_client: RespClient, redis_client: redis.Redis
) -> None:
    redis_client.set("bin", b"ok\xff\xfe")
    assert resp_client.execute("GET", "bin") == "ok\ufffd\ufffd"


def test_error_replies(resp_client: RespClient, redis_client: redis.Redis) -> None:
    redis_client.set("s", "x")
    with pytest.raises(RedisResponseError) as info:
        resp_client.execute("HGET", "s", "f")
    assert info.value.code == "WRONGTYPE"
    # in a pipeline the error is a value and the other commands still run
    replies = resp_client.pipeline([["HGET", "s", "f"], ["INCR", "n"], ["INCR", "n"]])
    assert isinstance(replies[0], RedisResponseError)
    assert replies[1:] == [1, 2]


def test_transaction_is_atomic_and_returns_each_reply(resp_client: RespClient) -> None:
    assert (
        resp_client.pipeline([["SADD", "m", "a", "b"], ["SMEMBERS", "m"]], transaction=True)[0] == 2
    )
    with pytest.raises(RedisResponseError, match="EXECABORT"):
        resp_client.pipeline([["SADD", "m", "c"], ["NOSUCHCOMMAND"]], transaction=True)
    assert resp_client.execute("SCARD", "m") == 2, "an aborted transaction wrote nothing"


def test_script_survives_a_script_flush(resp_client: RespClient) -> None:
    script = resp_client.script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    assert script(keys=["k"], args=["a"]) == ["k", "a", 1]  # NOSCRIPT, then EVAL
    assert script(keys=["k"], args=["b"]) == ["k", "b", 2]  # EVALSHA
    resp_client.execute("SCRIPT", "FLUSH")
    assert script(keys=["k"], args=["c"]) == ["k", "c", 3]


def _script_commands(client: redis.Redis | redis.RedisCluster) -> tuple[int, int]:
    """(SCRIPT, EVAL) calls so far, over every node."""
    if isinstance(client, redis.RedisCluster):
        got = client.info("commandstats", target_nodes="primaries")
        one = all(isinstance(v, dict) and "calls" in v for v in got.values())
        per_node = [got] if one else list(got.values())  # redis-py unwraps a single node
    else:
        per_node = [client.info("commandstats")]

    def count(name: str) -> int:  # Redis 7 names SCRIPT LOAD "script|load"
        return sum(
            v["calls"] for s in per_node for k, v in s.items() if k in (name, f"{name}|load")
        )

    return count("cmdstat_script"), count("cmdstat_eval")


def test_a_new_process_sends_a_known_scripts_text_once(
    resp_client: RespClient, redis_client: redis.Redis | redis.RedisCluster
) -> None:
    """A cluster batch is one call per slot: a new process's first batch of 40 calls
    used to send SCRIPT LOAD + EVAL (the whole text) 40 times, though every node had
    the script from the processes before it."""
    text = f"-- {time.time_ns()}\nreturn redis.call('INCR', KEYS[1])"
    calls: list[tuple[list[str], list[str]]] = [([f"k{i}"], []) for i in range(40)]
    assert resp_client.script(text).many(calls) == [1] * 40  # every node learns it
    loads, evals = _script_commands(redis_client)
    assert resp_client.script(text).many(calls) == [2] * 40  # a new process's Script
    assert _script_commands(redis_client) == (loads + 1, evals + 1)


def test_script_errors_are_raised(resp_client: RespClient) -> None:
    with pytest.raises(RedisResponseError, match="boom"):
        resp_client.script("return redis.error_reply('boom')")()


def test_large_values_round_trip(resp_client: RespClient) -> None:
    big = "x" * (3 * 1024 * 1024 + 7)
    resp_client.execute("SET", "big", big)
    assert resp_client.execute("GET", "big") == big


def test_threads_share_one_client(resp_client: RespClient) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                resp_client.execute("INCR", "shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert resp_client.execute("GET", "shared") == "1600"


def test_password_db_and_name(tmp_path: Path) -> None:
    with RedisServer(extra_args=("--requirepass", "s3cret")) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/5"
        with from_url(url) as client:
            client.execute("SET", "k", "v")
            names = client.execute("CLIENT", "LIST")
        assert "name=rhailambda-function" in names
        with redis.Redis(port=server.port, password="s3cret", db=5, decode_responses=True) as admin:
            assert admin.get("k") == "v", "SELECT 5 took effect"
        with pytest.raises(RedisConnectionError) as info:
            from_url(f"redis://:wrong@127.0.0.1:{server.port}/0").execute("PING")
        assert "AUTH refused" in str(info.value)
        assert "wrong" not in str(info.value)


def test_an_acl_user_without_client_commands_still_connects() -> None:
    acl = ("--user", "app", "on", ">pw", "~*", "+@all", "-client")
    with RedisServer(extra_args=acl) as server:
        with from_url(f"redis://app:pw@127.0.0.1:{server.port}/0") as client:
            assert client.execute("SET", "k", "v") == "OK"
        with pytest.raises(RedisConnectionError, match="AUTH refused"):
            from_url(f"redis://app:nope@127.0.0.1:{server.port}/0").execute("PING")


def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    args = ("--unixsocket", str(sock), "--unixsocketperm", "700")
    with RedisServer(extra_args=args), from_url(f"unix://{sock}?db=2") as client:
        assert client.execute("SET", "k", "v") == "OK"
        assert "db=2" in client.execute("CLIENT", "INFO")


def test_unreachable_redis_is_a_connection_error() -> None:
    client = from_url(f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1")
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        client.execute("PING")


def test_no_reply_in_time_is_a_connection_error(redis_url: str) -> None:
    with from_url(f"{redis_url}?socket_timeout=0.2") as client:
        with pytest.raises(RedisConnectionError, match="no reply"):
            client.execute("BLPOP", "never", 2)
        assert client.execute("PING") == "PONG", "the broken connection was replaced"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def test_connection_dropped_while_idle_is_replaced(server: RedisServer) -> None:
    """A Lambda sandbox thawed after Redis dropped its connection: the health check
    PING notices it and the command runs once on a new connection."""
    with RespClient(from_url(server.url).address, health_check_s=0.0) as client:
        client.execute("SET", "n", "0")
        server.restart()
        assert client.execute("INCR", "n") == 1  # the data is gone with the restart
        assert client.execute("INCR", "n") == 2


def _kill_clients_soon(server: RedisServer, delay_s: float = 0.3) -> threading.Timer:
    def kill() -> None:
        with redis.Redis(port=server.port, decode_responses=True) as admin:
            admin.client_kill_filter(_type="normal")

    timer = threading.Timer(delay_s, kill)
    timer.start()
    return timer


def test_only_idempotent_commands_are_resent(server: RedisServer) -> None:
    """The connection breaks while the command is in flight: its reply is lost."""
    with RespClient(from_url(server.url).address, health_check_s=3600) as client:
        client.execute("PING")
        timer = _kill_clients_soon(server)
        with pytest.raises(RedisConnectionError):
            client.execute("BLPOP", "never", 2)  # not sent again: it would pop
        timer.join()
        timer = _kill_clients_soon(server)
        assert client.execute("BLPOP", "never", 1, idempotent=True) is None  # sent again
        timer.join()


def test_a_connection_redis_closed_while_idle_is_not_used(server: RedisServer) -> None:
    """Redis closed a pooled connection within the health-check interval (CLIENT KILL,
    its ``timeout``, a failover): nothing was sent on it, so even a command that is
    never re-sent runs, once, on a new connection (redis-py checks this too)."""
    with RespClient(from_url(server.url).address, health_check_s=3600) as client:
        client.execute("SET", "n", "0")
        with redis.Redis(port=server.port, decode_responses=True) as admin:
            admin.client_kill_filter(skipme=True, _type="normal")  # drop the client's connection
        time.sleep(0.1)
        assert client.execute("INCR", "n") == 1
        assert client.execute("GET", "n") == "1"


def test_an_interrupted_command_leaves_no_reply_behind(resp_client: RespClient) -> None:
    """Ctrl-C (any BaseException) in a blocked BLPOP, as in Client.wait: the connection
    must not go back to the pool, or the next command would read the BLPOP's reply."""

    class Interrupted(BaseException):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            resp_client.execute("BLPOP", "never", 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert resp_client.execute("ECHO", "mine") == "mine"


def test_forked_child_gets_its_own_connection(resp_client: RespClient) -> None:
    resp_client.execute("SET", "owner", "parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = resp_client.execute("SET", "owner", "child") == "OK"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert resp_client.execute("GET", "owner") == "child"
    assert resp_client.execute("PING") == "PONG", "the parent's socket still works"


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_verifies_the_server(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    args = (
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(extra_args=args):
        with from_url(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}") as client:
            assert client.execute("SET", "k", "over tls") == "OK"
            assert client.execute("GET", "k") == "over tls"
            assert client.execute("CLIENT", "ID") == client.execute("CLIENT", "ID"), "reused"
        with RespClient(
            parse_url(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}"), client_name=None
        ) as bare:
            assert bare.execute("CLIENT", "ID") == bare.execute("CLIENT", "ID"), "reused"
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            from_url(f"rediss://localhost:{tls_port}/0").execute("PING")  # unknown CA
        with pytest.raises(RedisConnectionError, match=r"match|mismatch"):
            from_url(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}").execute("PING")
        unchecked = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none"
        with from_url(unchecked) as client:
            assert client.execute("PING") == "PONG"
