"""aam-dcl's benchmark: the product and its peers side by side, in one run, on one Redis.

    .venv/bin/python bench/run.py [--quick] [--only transport,postgres,latency,memory]

Starts a private Redis on a free loopback port (never 6379), runs the benchmark cases
(cases.py), prints a table of records/s and ratios against the targets, and writes
bench/results/latest.json and latest.md. Numbers are measurements of this machine at this
moment: compare ratios between systems of the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from cases import CASES, Config
from systems import LABELS, TRANSPORT

from aam_dcl_cli.local_server import start_local_server

HERE = Path(__file__).resolve().parent
TARGETS = {
    "faststream": 3.0,  # transport >= 3x FastStream
    "limit": 0.7,  # transport >= 0.7x the pipelined orjson loop
    "postgres": 0.5,  # PostgreSQL sink >= 0.5x raw COPY
    "p99_ms": 5.0,  # p99 emit -> ack at 1 000 batches/s, low-latency profile
}
PHASES = ("publish", "consume", "end_to_end")

DEFAULTS = {  # name: (default run, --quick)
    "records": (200_000, 40_000),
    "reps": (3, 1),
    "latency_s": (10.0, 3.0),
    "memory_entries": ("1000,50000", "1000,10000"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s instead of about 3 min")
    parser.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated cases: {', '.join(CASES)}"
    )
    parser.add_argument("--records", type=int, help="records per transport/PostgreSQL run")
    parser.add_argument("--reps", type=int, help="transport repetitions (median reported)")
    parser.add_argument("--latency-s", type=float, help="seconds of publishing at the fixed rate")
    parser.add_argument("--batches-per-s", type=float, default=1000.0)
    parser.add_argument("--memory-entries", help="two stream lengths, e.g. 1000,50000")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("AAM_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="admin DSN: the bench creates and drops its own database there",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; use {', '.join(CASES)}")
    small, large = (int(n) for n in args.memory_entries.split(","))
    args.memory_entries = (small, large)
    return args


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "args": _jsonable(vars(args)), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="aam-dcl-bench-") as tmp:
        server = start_local_server(Path(tmp), prefer="redis")
        client = redis.Redis.from_url(server.url)
        results["machine"]["redis"] = client.info("server")["redis_version"]
        try:
            cfg = Config(
                redis_url=server.url,
                pg_admin_dsn=args.pg_dsn,
                records=args.records,
                reps=args.reps,
                latency_s=args.latency_s,
                batches_per_s=args.batches_per_s,
                memory_entries=args.memory_entries,
                timeout_s=300.0,
            )
            for name in args.only:
                log(f"{name} ...")
                case_started = time.monotonic()
                results["cases"][name] = CASES[name](cfg, client, log)
                results["cases"][name]["seconds"] = round(time.monotonic() - case_started, 1)
        finally:
            client.close()
            server.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    table = render(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown(results, table))
    log(f"wrote {args.out / 'latest.json'} and latest.md in {results['seconds']:.0f} s")
    return 0


# --- reporting -------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "meets" if ok else "BELOW"


def render(results: dict[str, Any]) -> str:
    cases = results["cases"]
    lines: list[str] = []
    if "transport" in cases:
        t = cases["transport"]
        lines += [
            f"Transport, null sink: {t['records']:,} records in {t['entries']:,} entries of "
            f"{t['chunk']} (7 CRM fields), median of {t['reps']}; records/s",
            f"  {'system':<46}{'publish':>12}{'consume':>12}{'end to end':>12}",
        ]
        for system in TRANSPORT:
            rates = t["records_per_s"][system]
            lines.append(f"  {LABELS[system]:<46}" + "".join(f"{rates[p]:>12,.0f}" for p in PHASES))
        peers = (("faststream", "FastStream"), ("limit", "limit"), ("redis-py", "plain"))
        for peer, label in peers:
            ratios = t["ratios"][peer]
            target = TARGETS.get(peer)
            row = f"  {'aam-dcl / ' + label:<46}" + "".join(f"{ratios[p]:>11.2f}x" for p in PHASES)
            if target is not None:
                worst = min(ratios.values())
                row += f"   target >= {target}x: {verdict(worst >= target)}"
            lines.append(row)
        lines.append("")
    if "postgres" in cases:
        p = cases["postgres"]
        lines += [
            f"PostgreSQL sink: {p['records']:,} rows, "
            f"{p['rows_per_transaction']:,} per transaction; rows/s",
            f"  {'worker → PostgreSQL (real dcl-worker)':<46}{p['worker']:>12,.0f}",
            f"  {'raw asyncpg COPY, same rows (no key)':<46}{p['raw_copy']:>12,.0f}",
            f"  {'raw asyncpg COPY, same rows, primary key':<46}{p['raw_copy_keyed']:>12,.0f}",
            f"  {'worker / raw COPY':<46}{p['ratio']:>11.2f}x   target >= "
            f"{TARGETS['postgres']}x: {verdict(p['ratio'] >= TARGETS['postgres'])}",
            f"  {'worker / keyed raw COPY':<46}{p['ratio_keyed']:>11.2f}x",
            "",
        ]
    if "latency" in cases:
        lat = cases["latency"]
        lines += [
            f"Latency, AAM_PROFILE=low-latency: {lat['batches']:,} batches of "
            f"{lat['records_per_batch']} at {lat['achieved_batches_per_s']:,.0f}/s "
            f"(target rate {lat['target_batches_per_s']:,.0f}/s); emitted_at → XACK",
            f"  p50 {lat['p50_ms']:.2f} ms   p90 {lat['p90_ms']:.2f} ms   "
            f"p99 {lat['p99_ms']:.2f} ms   max {lat['max_ms']:.1f} ms   "
            f"target p99 <= {TARGETS['p99_ms']:.0f} ms: "
            f"{verdict(lat['p99_ms'] <= TARGETS['p99_ms'])}",
            "",
        ]
    if "memory" in cases:
        m = cases["memory"]
        lines.append(
            f"Worker memory (null sink, {m['records_per_entry']}-record entries): RSS while "
            "draining a stream of"
        )
        for entries, run in m["runs"].items():
            lines.append(
                f"  {int(entries):>7,} entries: before {run['rss_before_mib']:6.1f} MiB, peak "
                f"{run['rss_peak_mib']:6.1f} MiB (+{run['growth_mib']:.1f})"
            )
        lines += [
            f"  peak ratio {m['peak_ratio']:.2f}x, growth difference "
            f"{m['growth_difference_mib']:+.1f} MiB",
            "",
        ]
    m = results["machine"]
    lines.append(
        f"{m['cpus']} CPUs, Redis {m['redis']}, Python {m['python']}, commit {m['commit']}, "
        f"{results['seconds']:.0f} s; load average {m['load_before'][0]:.1f} before, "
        f"{m['load_after'][0]:.1f} after"
    )
    if m["load_before"][0] > 0.5 * (m["cpus"] or 1):  # "after" includes the bench itself
        lines.append(
            "WARNING: other work was running on this machine: absolute numbers are low and "
            "ratios noisy; re-run on an idle machine before drawing conclusions"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any], table: str) -> str:
    return (
        "# Benchmark: latest run\n\n"
        f"Command: `{results['args']['command']}`. Written by bench/run.py; the full numbers "
        "(every repetition) are in latest.json, the method in docs/performance.md.\n\n"
        f"```\n{table}\n```\n"
    )


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or "unknown",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    out = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    out["command"] = " ".join(["bench/run.py", *sys.argv[1:]])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
