"""CPU cost of the function's per-task engine set-up: a fresh ``Engine`` and two modules
of bound methods (5 and 3, the shape of rhailambda's circle session) of a fresh object.

``python bench/bench_register.py`` prints CPU microseconds per iteration (process_time,
median of runs), for the whole set-up and for its parts, so an A/B against another build
run in the same minute gives a ratio. ``bench_engine.py`` reports the same case.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import rhai_py


class Session:
    """Stands in for a per-task extension session: the methods' signatures are the circle's."""

    def save(self, collection: object, id: object, record: object) -> None:
        return None

    def get(self, collection: object, id: object) -> object:
        return None

    def delete(self, collection: object, id: object) -> bool:
        return False

    def list_records(
        self, collection: object, offset: object = 0, limit: object = None
    ) -> list[object]:
        return []

    def find(self, collection: object, field: object, value: object) -> list[object]:
        return []

    def members(self) -> list[str]:
        return []

    def add_member(self, user: object) -> bool:
        return True

    def remove_member(self, user: object) -> bool:
        return True


def session_modules(session: Session) -> dict[str, dict[str, Callable[..., object]]]:
    return {
        "db": {
            "save": session.save,
            "get": session.get,
            "delete": session.delete,
            "list": session.list_records,
            "find": session.find,
        },
        "circle": {
            "members": session.members,
            "add_member": session.add_member,
            "remove_member": session.remove_member,
        },
    }


def engine_with_session() -> rhai_py.Engine:
    """One task's set-up: fresh engine, fresh session, both modules registered."""
    engine = rhai_py.Engine()
    for name, functions in session_modules(Session()).items():
        engine.register_module(name, functions)
    return engine


def engine_and_session_only() -> rhai_py.Engine:
    """The same without registering: what the registration costs is the difference."""
    engine = rhai_py.Engine()
    session_modules(Session())
    return engine


def cpu_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over `repeats` runs of the CPU time of one call, in microseconds."""
    for _ in range(calls // 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        samples.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    full = cpu_us(engine_with_session, args.calls, args.repeats)
    base = cpu_us(engine_and_session_only, args.calls, args.repeats)
    print(f"fresh Engine + register 5 + 3 bound methods: {full:.2f} µs CPU")
    print(f"fresh Engine + session, no registration:     {base:.2f} µs CPU")
    print(f"registration alone:                          {full - base:.2f} µs CPU")


if __name__ == "__main__":
    main()
