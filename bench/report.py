"""Turning results into the floors' verdicts, a terminal table, a PNG plot and RESULTS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import burst, fairness
from bench.deployments import CLUSTERS, STANDALONE

__all__ = ["deployment_rows", "deployments_markdown", "floors", "markdown", "plot", "print_tables"]

#: the floor's cluster: one node of the same server as STANDALONE (Redis 7)
ONE_NODE = next(n for n, (kind, masters) in CLUSTERS.items() if masters == 1 and kind == "redis")


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def floors(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each floor of issue 7 with the measured value and whether it is met (None: not run)."""
    ours = _get(r, "throughput", "median")
    peer_best = max((p["median"] for p in (r.get("peers") or {}).values()), default=None)
    trips = _get(r, "commands", "function") or {}
    trip_values = [v["round_trips"] for v in trips.values()] if trips else []
    rows = [
        ("end to end ≥ 5,000 tasks/s", ours, lambda v: v >= 5000, "{:,.0f}/s"),
        (
            "ahead of every peer",
            None if ours is None or peer_best is None else ours / peer_best,
            lambda v: v > 1,
            "x{:.1f} the best peer",
        ),
        (
            "shim overhead ≥ 20,000 tasks/s (batch 10)",
            _get(r, "shim", "batch_10", "median"),
            lambda v: v >= 20000,
            "{:,.0f}/s",
        ),
        ("warm p50 ≤ 2 ms", _get(r, "latency", "warm", "p50_ms"), lambda v: v <= 2, "{:.2f} ms"),
        ("warm p99 ≤ 10 ms", _get(r, "latency", "warm", "p99_ms"), lambda v: v <= 10, "{:.2f} ms"),
        (
            "first task after idle ≤ 5 ms",
            _get(r, "latency", "after_short_pause", "median_ms"),
            lambda v: v <= 5,
            "{:.1f} ms",
        ),
        (
            "first task after the local pool scaled to zero ≤ 50 ms",
            _get(r, "latency", "after_long_pause", "median_ms"),
            lambda v: v <= 50,
            "{:.1f} ms",
        ),
        (
            "standalone ≥ 13,000 tasks/s (deployments)",
            _get(r, "deployments", STANDALONE, "rate"),
            lambda v: v >= 13000,
            "{:,.0f}/s",
        ),
        (
            "standalone warm p50 ≤ 1.2 ms (deployments)",
            _get(r, "deployments", STANDALONE, "p50_ms"),
            lambda v: v <= 1.2,
            "{:.2f} ms",
        ),
        (
            "one-node cluster ≥ 80 % of standalone (Redis 7, ids of our client)",
            _get(r, "deployments", ONE_NODE, "ratio"),
            lambda v: v >= 0.8,
            "{:.0%}",
        ),
        (
            "cold start ≤ 100 ms (import + first task)",
            _get(r, "coldstart", "direct", "in_process_ms"),
            lambda v: v <= 100,
            "{:.0f} ms",
        ),
        (
            "cold start with a signed first task ≤ 100 ms",
            _get(r, "coldstart", "direct_signed", "in_process_ms"),
            lambda v: v <= 100,
            "{:.0f} ms",
        ),
        (
            "function round trips per batch ≤ 4, constant",
            max(trip_values) if trip_values else None,
            lambda v: v <= 4 and len(set(trip_values)) == 1,
            "{:g} (batch 1/10/100)",
        ),
    ]
    out = []
    for name, value, test, fmt in rows:
        met = None if value is None else bool(test(value))
        shown = "not run" if value is None else fmt.format(value)
        out.append({"floor": name, "value": value, "shown": shown, "met": met})
    return out


SIGNED_ROW = "rhailambda, signed tasks (client signs, function verifies)"


def _mark(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def _throughput_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ours = _get(r, "throughput", "median")
    rows = []
    if ours:
        rows.append(
            (
                "rhailambda (shim + local backend)",
                f"{ours:,.0f}",
                "1.00",
                _get(r, "throughput", "settings") or "",
            )
        )
    signed = r.get("throughput_signed")
    if signed:
        ratio = f"{signed['median'] / ours:.2f}" if ours else "-"
        rows.append((SIGNED_ROW, f"{signed['median']:,.0f}", ratio, signed.get("settings") or ""))
    for name, p in (r.get("peers") or {}).items():
        ratio = f"{p['median'] / ours:.2f}" if ours else "-"
        rows.append((name, f"{p['median']:,.0f}", ratio, p["settings"]))
    return rows


def deployment_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """name, tasks/s, ratio, p50, p99, p50 ratio, runs: the deployments section's table."""
    rows = []
    for name, d in (r.get("deployments") or {}).items():
        runs = ", ".join(f"{x:,.0f}" for x in d["runs"])
        rows.append(
            (
                name,
                f"{d['rate']:,.0f}",
                f"{d['ratio']:.2f}",
                f"{d['p50_ms']:.2f}",
                f"{d['p99_ms']:.2f}",
                f"{d['p50_ratio']:.2f}",
                runs,
            )
        )
    return rows


DEPLOYMENT_COLS = (
    "deployment",
    "tasks/s",
    "ratio",
    "warm p50 ms",
    "warm p99 ms",
    "p50 ratio",
    "runs (tasks/s)",
)


def deployments_markdown(r: dict[str, Any]) -> list[str]:
    rows = deployment_rows(r)
    if not rows:
        return []
    lines = [
        "",
        "## Deployments side by side (the same run; ratios to standalone)",
        "",
        "| " + " | ".join(DEPLOYMENT_COLS) + " |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def print_tables(r: dict[str, Any], console: Console) -> None:
    d = Table(title="Deployments (throughput and warm latency; ratios to standalone)")
    for col in DEPLOYMENT_COLS:
        d.add_column(col, overflow="fold")
    for row in deployment_rows(r):
        d.add_row(*row)
    if d.rows:
        console.print(d)
    b = Table(title="Bursts from zero (time to the last reply; ratios: their time / ours)")
    for col in burst.COLS[:5]:
        b.add_column(col)
    for row in burst.rows(r):
        b.add_row(*row[:5])
    if b.rows:
        console.print(b)
    t = Table(title="Throughput end to end (median tasks/s)")
    for col in ("system", "tasks/s", "ratio to ours", "settings"):
        t.add_column(col, overflow="fold")
    for name, rate, ratio, settings in _throughput_rows(r):
        t.add_row(name, rate, ratio, settings.split(";")[0][:60])
    console.print(t)
    f = Table(title="Floors")
    for col in ("floor", "measured", "verdict"):
        f.add_column(col)
    for row in r.get("floors", []):
        f.add_row(row["floor"], row["shown"], _mark(row["met"]))
    console.print(f)
    for section, message in (r.get("errors") or {}).items():
        console.print(f"[red]section {section} failed:[/red] {message}")


def plot(r: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _throughput_rows(r)
    lat = r.get("latency") or {}
    if not rows and not lat:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if rows:
        names = [x[0].split(" (")[0] for x in rows]
        values = [float(x[1].replace(",", "")) for x in rows]
        bars = ax1.bar(names, values, color=["#1f77b4"] + ["#aaaaaa"] * (len(rows) - 1))
        ax1.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        ax1.set_ylabel("tasks/s (median)")
        ax1.set_title(f"End to end, N={_get(r, 'meta', 'n_tasks')} tasks, 2 cores")
        ax1.axhline(5000, color="red", linestyle="--", linewidth=1, label="floor 5,000/s")
        ax1.legend()
    if lat:
        labels, values = [], []
        for label, path_ in (
            ("warm p50", ("warm", "p50_ms")),
            ("warm p99", ("warm", "p99_ms")),
            ("after 1 s idle", ("after_short_pause", "median_ms")),
            ("pool scaled to 0", ("after_long_pause", "median_ms")),
        ):
            v = _get(lat, *path_)
            if v is not None:
                labels.append(label)
                values.append(v)
        bars = ax2.bar(labels, values, color="#2ca02c")
        ax2.bar_label(bars, labels=[f"{v:.1f}" for v in values])
        ax2.set_yscale("log")
        ax2.set_ylabel("ms, submit to reply (log)")
        ax2.set_title("Latency, one task at a time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, spec: str = "{:,.0f}") -> str:
    return "-" if v is None else spec.format(v)


def markdown(r: dict[str, Any]) -> str:
    m = r.get("meta", {})
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{m.get('command')}` at {m.get('finished')} (git {m.get('git')}), "
        f"{m.get('cpus')} cores, load average before {m.get('load_before')} / after "
        f"{m.get('load_after')}; Python {m.get('python')}, {m.get('redis')}. Each figure is the "
        f"median of {m.get('runs')} runs; N = {m.get('n_tasks'):,} tasks per throughput run, "
        f"{m.get('processes')} worker processes for every system."
        + (" **Quick mode (smoke test): do not quote these.**" if m.get("quick") else ""),
        "",
        "## Throughput end to end (`let x = 10; x * 2`, submit all, await every reply)",
        "",
        "| system | tasks/s (median) | ratio to ours | runs | settings |",
        "|---|---:|---:|---|---|",
    ]
    runs = {"rhailambda (shim + local backend)": _get(r, "throughput", "runs")}
    runs[SIGNED_ROW] = _get(r, "throughput_signed", "runs")
    runs |= {k: v["runs"] for k, v in (r.get("peers") or {}).items()}
    for name, rate, ratio, settings in _throughput_rows(r):
        shown = ", ".join(f"{x:,.0f}" for x in runs.get(name) or [])
        lines.append(f"| {name} | {rate} | {ratio} | {shown} | {settings} |")
    lines += deployments_markdown(r)
    lines += burst.markdown(r)
    lines += fairness.markdown(r)
    lines += ["", "## Floors", "", "| floor | measured | verdict |", "|---|---|---|"]
    for row in r.get("floors", []):
        lines.append(f"| {row['floor']} | {row['shown']} | {_mark(row['met'])} |")
    shim = r.get("shim") or {}
    if shim:
        lines += [
            "",
            "## Shim overhead (drain into a no-op invoker, one shim process)",
            "",
            "| batch size | tasks/s (median) | runs |",
            "|---:|---:|---|",
        ]
        for key, v in shim.items():
            runs_ = ", ".join(f"{x:,.0f}" for x in v["runs"])
            lines.append(f"| {key.removeprefix('batch_')} | {v['median']:,.0f} | {runs_} |")
    lat = r.get("latency") or {}
    if lat:
        lines += [
            "",
            f"## Latency (one client, one task at a time; shim `{lat.get('shim_args')}`)",
            "",
            "| measure | value | PING after the same pause (machine wake-up) |",
            "|---|---:|---:|",
            f"| warm p50 | {_fmt(_get(lat, 'warm', 'p50_ms'), '{:.2f} ms')} | |",
            f"| warm p99 | {_fmt(_get(lat, 'warm', 'p99_ms'), '{:.2f} ms')} | |",
        ]
        for key, label in (
            ("after_short_pause", "first task after an idle pause"),
            ("after_long_pause", "first task after the pool scaled to zero"),
        ):
            v = lat.get(key)
            if v:
                lines.append(
                    f"| {label} ({v['pause_s']:g} s) | {v['median_ms']:.1f} ms | "
                    f"{v['ping_after_pause_ms']:.2f} ms |"
                )
        mem = lat.get("template_idle")
        if mem:
            lines.append(
                f"| the pool's template process at idle (RSS / PSS / USS) | "
                f"{mem['rss_kb'] / 1024:.1f} / {mem['pss_kb'] / 1024:.1f} / "
                f"{mem['uss_kb'] / 1024:.1f} MB | |"
            )
    cold = r.get("coldstart") or {}
    if cold:
        d = cold.get("direct", {})
        lines += [
            "",
            "## Cold start (fresh process)",
            "",
            "| measure | ms (median) |",
            "|---|---:|",
            f"| import rhailambda.functions.handler | {_fmt(d.get('import_ms'), '{:.0f}')} |",
            f"| first task (handler call) | {_fmt(d.get('first_task_ms'), '{:.1f}')} |",
            f"| import + first task, in process | {_fmt(d.get('in_process_ms'), '{:.0f}')} |",
            "| import + first task, in process, the task signed (coincurve loaded for it) | "
            f"{_fmt(_get(cold, 'direct_signed', 'in_process_ms'), '{:.0f}')} |",
            f"| whole process, spawn to exit | {_fmt(d.get('process_wall_ms'), '{:.0f}')} |",
            f"| bare `python -c pass` | {_fmt(cold.get('bare_python_ms'), '{:.0f}')} |",
        ]
        rie = cold.get("rie")
        if rie:
            lines += [
                "| RIE: first invoke (runtime start + import + task) | "
                f"{rie['cold_invoke_ms']:.0f} |",
                f"| RIE: second invoke (warm) | {rie['warm_invoke_ms']:.1f} |",
            ]
        elif cold.get("rie_note"):
            lines.append(f"| RIE | skipped: {cold['rie_note']} |")
    cmd = r.get("commands") or {}
    if cmd.get("per_task"):
        pt = cmd["per_task"]
        lines += [
            "",
            f"## Redis commands per task (MONITOR over {pt['n']:,} tasks, "
            f"shim `{pt['shim_args']}`)",
            "",
            f"Top-level commands per task: **{pt['top_level_total_per_task']:.2f}** "
            f"(client {pt['client_per_task']:.2f}); all commands incl. those our Lua "
            f"scripts run: {pt['all_per_task']:.2f}. {pt['batches']} batches of "
            f"{_fmt(pt['tasks_per_batch'], '{:.0f}')} tasks; per batch the function made "
            f"{_fmt(pt['function_round_trips_per_batch'], '{:.2f}')} round trips and the "
            f"shim {_fmt(pt['shim_round_trips_per_batch'], '{:.2f}')}.",
            "",
            "| top-level command | per task |",
            "|---|---:|",
        ]
        for k, v in pt["top_level_per_task"].items():
            lines.append(f"| {k} | {v:.3f} |")
        lines += ["", "| inside Lua | per task |", "|---|---:|"]
        for k, v in pt["in_lua_per_task"].items():
            lines.append(f"| {k} | {v:.3f} |")
    if cmd.get("function"):
        lines += [
            "",
            "## The function's round trips per batch (handler in process)",
            "",
            "| batch size | round trips | EVALSHA | ms per batch | tasks/s, one process |",
            "|---:|---:|---:|---:|---:|",
        ]
        for size, v in cmd["function"].items():
            lines.append(
                f"| {size} | {v['round_trips']:g} | {v['evalsha']:g} | "
                f"{v['batch_ms']:.2f} | {v['tasks_per_s']:,.0f} |"
            )
    idle = r.get("idle") or {}
    if idle:
        by = ", ".join(f"{k} {v:.0f}" for k, v in idle["by_command_per_min"].items())
        lines += [
            "",
            f"## Idle cost (a shim on an empty queue, watched {idle['seconds']:.0f} s)",
            "",
            f"- Redis commands per minute: {idle['top_level_per_min']:.0f} top-level "
            f"({by}); {idle['commands_per_min']:.0f} counting those inside Lua",
            f"- CPU: shim {idle['shim_cpu_pct']:.2f} %, local workers "
            f"{idle['workers_cpu_pct']:.2f} % of one core",
        ]
    ceil = r.get("ceiling") or {}
    if ceil.get("rps"):
        lines += [
            "",
            f"## The ceiling: redis-benchmark here ({ceil['clients']} connections)",
            "",
            "| command | requests/s, no pipelining | pipelined x16 |",
            "|---|---:|---:|",
        ]
        for k, v in ceil["rps"].items():
            lines.append(f"| {k} | {v['P1']:,.0f} | {v['P16']:,.0f} |")
        frac = _get(r, "derived", "redis_load_fraction")
        if frac is not None:
            lines += [
                "",
                f"At our median throughput Redis served "
                f"{_get(r, 'derived', 'top_level_cmds_per_s'):,.0f} top-level commands/s: "
                f"{frac:.0%} of the unpipelined EVAL ceiling (Redis is not the bottleneck).",
            ]
    cpu = _get(r, "throughput", "cpu_ms_per_1000_tasks")
    if cpu:
        total = sum(cpu.values())
        lines += [
            "",
            "## Where the CPU goes (end to end, ms of CPU per 1,000 tasks, median run)",
            "",
            "| process | CPU ms / 1,000 tasks | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {k} | {v:.0f} | {v / total:.0%} |" for k, v in cpu.items()]
        lines.append(f"| total | {total:.0f} | (2 cores give 2,000 ms per second) |")
    if r.get("sweep"):
        lines += [
            "",
            "## Shim knob sweep (one run each, best first)",
            "",
            "| knobs | tasks/s |",
            "|---|---:|",
        ]
        lines += [f"| `{row['args']}` | {row['rate']:,.0f} |" for row in r["sweep"]]
    if r.get("errors"):
        lines += ["", "## Sections that failed", ""]
        lines += [f"- {k}: {v}" for k, v in r["errors"].items()]
    return "\n".join(lines) + "\n"
