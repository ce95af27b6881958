"""Modules of bound methods of one object (the function's per-task sessions).

Such a module is built once per shape and shared by the engines registering it; each
engine supplies its own receiver. These tests pin that every call still reaches the
object registered on the engine running the script, that a shape follows changes of
the methods, that everything else works as before, and that no receiver is kept alive.
"""

from __future__ import annotations

import functools
import gc
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from rhai_py import Engine, RhaiRuntimeError


class Session:
    """A per-task session: records the calls it gets."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls: list[tuple[str, object]] = []

    def save(self, key: object, value: object = None) -> str:
        self.calls.append(("save", key))
        return self.label

    def get(self, key: object) -> list[object]:
        self.calls.append(("get", key))
        return [self.label, key]

    def who(self) -> str:
        return self.label

    def deny(self, user: object) -> None:
        raise PermissionError(f"{self.label}: {user} may not")

    def modules(self) -> dict[str, dict[str, Callable[..., object]]]:
        return {
            "db": {"save": self.save, "get": self.get, "who": self.who},
            "auth": {"check": self.deny},
        }


def engine_for(session: Session, **kwargs: Any) -> Engine:
    engine = Engine(**kwargs)
    for name, functions in session.modules().items():
        engine.register_module(name, functions)
    return engine


def test_each_engine_calls_the_session_registered_on_it() -> None:
    first, second = Session("first"), Session("second")
    engines = [engine_for(first), engine_for(second)]
    assert [e.eval("db::who()") for e in engines] == ["first", "second"]
    assert engines[1].eval('db::get("k")') == ["second", "k"]
    assert engines[0].eval('db::save("a", 1)') == "first"
    assert first.calls == [("save", "a")]
    assert second.calls == [("get", "k")]
    third = Session("third")
    engines[0].register_module("other", third.modules()["db"])
    assert engines[0].eval("[db::who(), other::who()]") == ["first", "third"]


def test_modules_of_two_receivers_on_one_engine() -> None:
    first, second = Session("first"), Session("second")
    engine = Engine()
    engine.register_module("a", first.modules()["db"])
    engine.register_module("b", second.modules()["db"])
    assert engine.eval("[a::who(), b::who(), a::get(1), b::get(2)]") == [
        "first",
        "second",
        ["first", 1],
        ["second", 2],
    ]


def test_two_engines_running_at_once_keep_to_their_sessions() -> None:
    sessions = [Session(f"s{i}") for i in range(2)]
    engines = [engine_for(s, max_operations=None) for s in sessions]
    script = "let n = 0; for i in 0..3000 { if db::save(i) == me { n += 1 } } n"
    both_started = threading.Barrier(2, timeout=30)

    def run(i: int) -> object:
        both_started.wait()
        return engines[i].eval(script, constants={"me": f"s{i}"})

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(2)))
    assert results == [3000, 3000]
    for session in sessions:
        assert session.calls == [("save", i) for i in range(3000)]


def test_reregistering_a_module_switches_to_the_new_receiver() -> None:
    old, new = Session("old"), Session("new")
    engine = engine_for(old)
    assert engine.eval("db::who()") == "old"
    engine.register_module("db", new.modules()["db"])
    assert engine.eval("db::who()") == "new"
    with pytest.raises(RhaiRuntimeError, match="old: 1 may not"):
        engine.eval("auth::check(1)")  # the other module keeps its receiver


def test_a_method_module_replaced_by_plain_functions_and_back() -> None:
    session = Session("s")
    engine = engine_for(session)
    engine.register_module("db", {"who": lambda: "plain"})
    assert engine.eval("db::who()") == "plain"
    other = Session("other")
    engine.register_module("db", other.modules()["db"])
    assert engine.eval("db::who()") == "other"


def test_changed_defaults_and_code_change_the_arities() -> None:
    class Box:
        def get(self, a: int, b: int = 1) -> int:
            return a + b

    def three(self: Box, a: int, b: int, c: int) -> int:
        return a * b * c

    engine = Engine()
    engine.register_module("m", {"get": Box().get})
    assert engine.eval("m::get(1)") == 2

    Box.get.__defaults__ = None
    engine = Engine()
    engine.register_module("m", {"get": Box().get})
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval("m::get(1)")
    assert engine.eval("m::get(1, 5)") == 6

    Box.get.__code__ = three.__code__
    engine = Engine()
    engine.register_module("m", {"get": Box().get})
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval("m::get(1, 5)")
    assert engine.eval("m::get(2, 3, 4)") == 24

    Box.get.__defaults__ = (10,)
    engine = Engine()
    engine.register_module("m", {"get": Box().get})
    assert engine.eval("m::get(2, 3)") == 60


def test_removed_keyword_defaults_fail_the_registration_again() -> None:
    class Box:
        def get(self, a: int, *, scale: int = 2) -> int:
            return a * scale

    engine = Engine()
    engine.register_module("m", {"get": Box().get})
    assert engine.eval("m::get(4)") == 8
    Box.get.__kwdefaults__ = None
    with pytest.raises(ValueError, match="m::get: keyword-only parameter scale has no default"):
        Engine().register_module("m", {"get": Box().get})


def test_plain_functions_mixed_receivers_and_other_callables_still_work() -> None:
    first, second = Session("first"), Session("second")
    items: list[object] = []

    class Fake:
        """Has __self__ and __func__ but is no bound method: called as itself."""

        __self__ = first
        __func__ = Session.who

        def __call__(self) -> str:
            return "fake"

    class Counter:
        @classmethod
        def kind(cls) -> str:
            return cls.__name__

        @staticmethod
        def double(x: int) -> int:
            return 2 * x

    engine = Engine()
    engine.register_module("plain", {"inc": lambda x: x + 1, "len": len})
    engine.register_module("mixed", {"a": first.who, "b": second.who, "c": first.get})
    engine.register_module(
        "other",
        {
            "append": items.append,
            "fake": Fake(),
            "kind": Counter.kind,
            "double": Counter.double,
            "pow": functools.partial(pow, 2),
        },
    )
    engine.register_module("one_method", {"c": first.get, "d": len})
    assert engine.eval('plain::inc(1) + plain::len("abc")') == 5
    assert engine.eval("[mixed::a(), mixed::b(), mixed::c(3)]") == ["first", "second", ["first", 3]]
    assert engine.eval("other::append(7); other::fake()") == "fake"
    assert items == [7]
    assert engine.eval("[other::kind(), other::double(4), other::pow(5)]") == ["Counter", 8, 32]
    assert engine.eval("[one_method::c(1), one_method::d([1, 2])]") == [["first", 1], 2]


def test_methods_of_classes_as_receivers() -> None:
    class Config:
        @classmethod
        def name(cls) -> str:
            return cls.__name__

        @classmethod
        def add(cls, a: int, b: int = 0) -> int:
            return a + b

    class Other(Config):
        pass

    engines = [Engine(), Engine()]
    engines[0].register_module("c", {"name": Config.name, "add": Config.add})
    engines[1].register_module("c", {"name": Other.name, "add": Other.add})
    assert [e.eval("c::name() + c::add(1) + c::add(1, 2)") for e in engines] == [
        "Config13",
        "Other13",
    ]


def test_an_exception_in_a_method_names_the_function_and_is_the_cause() -> None:
    raised: list[BaseException] = []

    class Guard:
        def check(self, user: object) -> None:
            err = PermissionError(f"{user} may not")
            raised.append(err)
            raise err

    engine = Engine()
    engine.register_module("auth", {"check": Guard().check})
    with pytest.raises(RhaiRuntimeError) as info:
        engine.eval('let u = "bob";\nauth::check(u)')
    err = info.value
    assert "auth::check: PermissionError: bob may not" in err.message
    assert (err.line, err.column) == (2, 7)
    assert err.__cause__ is raised[0]
    frames = [f.name for f in _frames(err.__cause__)]
    assert frames[-1] == "check"
    caught = engine.eval_text('let r = (); try { auth::check("eve") } catch (e) { r = e } r')
    assert caught == "auth::check: PermissionError: eve may not"


def _frames(exc: BaseException) -> list[Any]:
    import traceback

    return list(traceback.extract_tb(exc.__traceback__))


def test_registration_errors_are_as_before() -> None:
    class Box:
        def ok(self, a: int) -> int:
            return a

        def kw(self, a: int, *, b: int) -> int:
            return a + b

        def many(self, *args: int) -> int:
            return len(args)

    box = Box()
    engine = Engine()
    with pytest.raises(ValueError, match=r"^m::kw: keyword-only parameter b has no default"):
        engine.register_module("m", {"ok": box.ok, "kw": box.kw, "bad name": box.ok})
    with pytest.raises(ValueError, match=r'^"bad name" is not a valid Rhai identifier$'):
        engine.register_module("m", {"ok": box.ok, "bad name": box.ok, "kw": box.kw})
    with pytest.raises(TypeError, match=r"^m::three: expected a callable, got int$"):
        engine.register_module("m", {"ok": box.ok, "three": 3})
    with pytest.raises(TypeError):
        engine.register_module("m", {"ok": box.ok, 3: box.ok})  # type: ignore[dict-item]
    Box.many.__signature__ = 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"^m::many: cannot read the signature of <bound method"):
        engine.register_module("m", {"ok": box.ok, "many": box.many})
    with pytest.raises(RhaiRuntimeError, match="Module not found: m"):
        engine.eval("m::ok(1)")  # nothing was registered


def test_scripts_reach_methods_through_closures_and_nested_engines() -> None:
    outer_session, inner_session = Session("outer"), Session("inner")
    inner = engine_for(inner_session)
    outer = engine_for(outer_session)
    outer.register_module("nest", {"run": lambda: inner.eval("db::who()")})
    assert outer.eval("[db::who(), nest::run(), db::who()]") == ["outer", "inner", "outer"]
    assert outer.eval("[1, 2].map(|x| db::get(x))") == [["outer", 1], ["outer", 2]]
    assert outer.eval('fn f(k) { db::get(k) } f("x")') == ["outer", "x"]


def test_registering_methods_while_another_thread_runs_a_script() -> None:
    session = Session("s")
    engine = engine_for(session, max_operations=None)
    ast = engine.compile("let s = 0; for i in 0..20000 { s += db::get(i)[1]; } s")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.eval, ast)
        engine.register_module("later", Session("later").modules()["db"])
        assert future.result(timeout=60) == sum(range(20000))
    assert engine.eval("later::who() + db::who()") == "laters"


def test_receivers_are_not_kept_alive() -> None:
    class Local:  # methods of its own: the first registration builds (and caches) the shape
        def __init__(self, label: str) -> None:
            self.label = label

        def who(self) -> str:
            return self.label

        def get(self, key: object) -> object:
            return key

    def functions(obj: Local) -> dict[str, Callable[..., object]]:
        return {"who": obj.who, "get": obj.get}

    built, replaced, last = Local("built"), Local("replaced"), Local("last")
    refs = [weakref.ref(built), weakref.ref(replaced), weakref.ref(last)]
    engine = Engine()
    engine.register_module("db", functions(built))
    engine.register_module("kept", functions(built))
    assert engine.eval("db::who() + kept::get(1)") == "built1"
    engine.register_module("db", functions(replaced))
    assert engine.eval("db::who()") == "replaced"
    engine.register_module("db", {"who": lambda: "plain"})
    other = Engine()
    other.register_module("db", functions(last))
    assert other.eval("db::who()") == "last"
    del built, replaced, last
    gc.collect()
    assert [r() is None for r in refs] == [False, True, False]  # `kept` and `other` hold theirs
    del engine, other
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]


@pytest.mark.parametrize("mixed", [False, True], ids=["methods", "mixed"])
def test_a_replaced_receiver_may_use_the_engine_when_it_goes(mixed: bool) -> None:
    """Re-registering drops the old receiver: its finalizer may evaluate on the engine.

    Registration takes the engine's lock with the GIL held; were the old receiver (or a
    module holding it) dropped under that lock, this finalizer would deadlock.
    """
    seen: list[object] = []

    class Finalizing:
        def who(self) -> str:
            return "old"

        def __del__(self) -> None:
            seen.append(engine.eval("40 + 2"))

    engine = Engine()
    functions: dict[str, Callable[..., object]] = {"who": Finalizing().who}
    if mixed:
        functions["len"] = len
    engine.register_module("db", functions)
    del functions
    assert engine.eval("db::who()") == "old"
    done = threading.Event()

    def reregister() -> None:
        engine.register_module("db", {"who": lambda: "new"})
        done.set()

    threading.Thread(target=reregister, daemon=True).start()
    assert done.wait(30), "re-registering deadlocked in the old receiver's finalizer"
    assert seen == [42]
    assert engine.eval("db::who()") == "new"


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator as users write them: every wrapper shares one code object."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class Decorated:
    @_logged
    def two(self, a: int, b: int) -> int:
        return a + b

    @_logged
    def one(self, a: int) -> int:
        return a * 10


def test_decorated_functions_keep_their_own_arities() -> None:
    """functools.wraps wrappers share their code object: the arity comes from each one's
    signature (``__wrapped__``), not from the first wrapper seen with that code."""
    engine = Engine()
    engine.register_module("m", {"two": Decorated().two, "one": Decorated().one})
    engine.register_fn("plus", _logged(lambda a, b, c: a + b + c))
    engine.register_fn("neg", _logged(lambda a: -a))
    assert engine.eval("m::two(1, 2) + m::one(3) + plus(1, 2, 3) + neg(4)") == 3 + 30 + 6 - 4
    with pytest.raises(RhaiRuntimeError, match="not found"):
        engine.eval("m::one(1, 2)")
