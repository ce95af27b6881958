"""The GIL is released while scripts run: threads evaluate in parallel, ASTs are shared."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rhai_py import Engine, RhaiLimitError

FIB = "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } } fib(N)"


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_other_threads_run_while_a_script_runs() -> None:
    """A script holding the GIL would freeze every other thread until it returned.

    No speed is measured here (that is `rhai-py/bench`): one thread runs a script that
    only ends at its 0.6 s timeout while this thread keeps sampling the clock. With the
    GIL held for the script, no sample could land in the middle of the script's run.
    """
    engine = Engine(max_operations=None)
    ast = engine.compile("let n = 0; loop { n += 1; }")
    window: list[float] = []

    def run() -> None:
        window.append(time.monotonic())
        with pytest.raises(RhaiLimitError) as err:
            engine.eval(ast, timeout_s=0.6)
        assert err.value.limit == "timeout"
        window.append(time.monotonic())

    samples: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run)
        while not future.done():
            samples.append(time.monotonic())
        future.result()
    began, ended = window
    middle = [t for t in samples if began + 0.2 <= t <= ended - 0.2]
    assert middle, "no other thread ran while the script did: the GIL was held"


def test_one_ast_on_many_engines_and_threads() -> None:
    ast = Engine().compile("fn sq(x) { x * x } sq(n) + offset")
    engines = [Engine(), Engine(max_operations=None)]

    def work(i: int) -> object:
        return engines[i % 2].eval(ast, constants={"offset": 1}, variables={"n": i})

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(64)))
    assert results == [i * i + 1 for i in range(64)]


def test_callbacks_run_from_many_threads() -> None:
    engine = Engine()
    engine.register_module("py", {"double": lambda x: x * 2})
    ast = engine.compile("let s = 0; for i in 0..50 { s += py::double(i); } s")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: engine.eval(ast), range(16)))
    assert results == [2 * sum(range(50))] * 16


def test_registering_while_another_thread_runs_a_script() -> None:
    engine = Engine(max_operations=None)
    engine.register_fn("tick", lambda: 1)
    ast = engine.compile("let s = 0; for i in 0..20000 { s += tick(); } s")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.eval, ast)
        engine.register_fn("later", lambda: 2)
        assert future.result(timeout=60) == 20000
    assert engine.eval("later()") == 2


def test_nested_eval_on_the_same_engine_while_registering() -> None:
    """A callback evaluating on its own engine must not deadlock with a registration."""
    engine = Engine(max_operations=None)
    ast = engine.compile("inner() + 1")
    engine.register_fn("inner", lambda: engine.eval("20 + 1"))
    engine.register_fn("slow", lambda: engine.eval(ast))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.eval, "let s = 0; for i in 0..300 { s += slow(); } s")
        for n in range(20):
            engine.register_fn(f"extra{n}", lambda n=n: n)
        assert future.result(timeout=60) == 300 * 22
