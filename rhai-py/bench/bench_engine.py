"""Micro-benchmarks of rhai_py, and fib(22) against the native `rhai-run` binary.

Run with ``make -C rhai-py bench``. Prints a table and writes JSON (``--json``).
Every figure is the median of several runs; the machine may be shared, so the
floors below are checked against the median, not the best run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import rhai_py
from bench_register import engine_with_session
from rich.console import Console
from rich.table import Table

FIB_SCRIPT = "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } } fib(22)"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    floor: float | None  # the value must be <= floor

    @property
    def ok(self) -> bool:
        return self.floor is None or self.value <= self.floor


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Median over `repeats` runs of the mean cost of one call, in microseconds."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def parallel_ratio(engine: rhai_py.Engine, repeats: int) -> float:
    """Wall time of fib(22) on two threads at once over two in a row (1.0: no parallelism)."""
    ast = engine.compile(FIB_SCRIPT)
    serial = median_s(lambda: (engine.eval(ast), engine.eval(ast)), repeats)
    with ThreadPoolExecutor(2) as pool:
        parallel = median_s(lambda: list(pool.map(lambda _: engine.eval(ast), range(2))), repeats)
    return parallel / serial


def run_binary(binary: Path, script: Path) -> None:
    subprocess.run([str(binary), str(script)], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rhai-run", type=Path, help="native rhai-run binary (rhai 1.27.0)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    engine = rhai_py.Engine()
    answer = engine.compile("40 + 2")
    figures = [
        Figure(
            "eval(cached AST '40 + 2')", per_call_us(lambda: engine.eval(answer), 20_000), "µs", 5.0
        ),
        Figure(
            "eval_text(cached AST '40 + 2')",
            per_call_us(lambda: engine.eval_text(answer), 20_000),
            "µs",
            5.0,
        ),
        Figure(
            "compile + eval('40 + 2')",
            per_call_us(lambda: engine.eval("40 + 2"), 20_000),
            "µs",
            25.0,
        ),
        Figure("Engine()", per_call_us(rhai_py.Engine, 20_000), "µs", 20.0),
        Figure(
            "Engine() + register 5 + 3 bound methods",
            per_call_us(engine_with_session, 20_000),
            "µs",
            None,
        ),
    ]

    fib_engine = rhai_py.Engine(max_operations=None, timeout_s=None)
    py_fib = median_s(lambda: fib_engine.eval(FIB_SCRIPT), args.repeats)
    limited_fib = median_s(lambda: engine.eval(FIB_SCRIPT), args.repeats)
    figures.append(Figure("fib(22) rhai_py, no limits", py_fib * 1e3, "ms", None))
    figures.append(Figure("fib(22) rhai_py, default limits", limited_fib * 1e3, "ms", None))
    if (os.cpu_count() or 1) >= 2:
        ratio = parallel_ratio(fib_engine, args.repeats)
        figures.append(Figure("fib(22) on two threads / two in a row", ratio, "x", 0.8))
    if args.rhai_run:
        with tempfile.TemporaryDirectory() as tmp:
            fib_file, empty_file = Path(tmp) / "fib.rhai", Path(tmp) / "empty.rhai"
            fib_file.write_text(FIB_SCRIPT)
            empty_file.write_text("")
            native_fib = median_s(lambda: run_binary(args.rhai_run, fib_file), args.repeats)
            startup = median_s(lambda: run_binary(args.rhai_run, empty_file), args.repeats)
        figures += [
            Figure("fib(22) rhai-run process", native_fib * 1e3, "ms", None),
            Figure("rhai-run process start (empty script)", startup * 1e3, "ms", None),
            Figure("ratio rhai_py / rhai-run", py_fib / native_fib, "x", 1.10),
            Figure(
                "ratio rhai_py / rhai-run, start excluded",
                py_fib / max(native_fib - startup, 1e-9),
                "x",
                None,
            ),
            Figure(
                "ratio rhai_py (default limits) / rhai-run, start excluded",
                limited_fib / max(native_fib - startup, 1e-9),
                "x",
                None,
            ),
        ]

    table = Table(
        title=f"rhai_py {rhai_py.__version__} (Rhai {rhai_py.RHAI_VERSION}), median of runs"
    )
    for column in ("benchmark", "value", "floor", "ok"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for f in figures:
        floor = "" if f.floor is None else f"≤ {f.floor:g} {f.unit}"
        table.add_row(
            f.name,
            f"{f.value:.3f} {f.unit}",
            floor,
            "" if f.floor is None else ("yes" if f.ok else "NO"),
        )
    Console().print(table)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "machine": platform.machine(),
                    "figures": [asdict(f) | {"ok": f.ok} for f in figures],
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
