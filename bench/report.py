#!/usr/bin/env python3
"""Prints the table of a bench/run.sh run: figure, value (median of the runs), target, and the Go
service's claim beside it, then where the CPU went during each figure.

Usage: bench/report.py RESULTS_DIR [MEASURE_SECONDS TOTAL_SECONDS]
"""

import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
measure_s = sys.argv[2] if len(sys.argv) > 2 else "?"
total_s = sys.argv[3] if len(sys.argv) > 3 else "?"
meta = json.loads((out / "meta.json").read_text())
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]


def runs(figure):
    return [r for r in rows if r["figure"] == figure]


def median(figure, key):
    values = [r[key] for r in runs(figure) if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, unit="", digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def spread(figure, key, digits=0):
    values = [r.get(key) for r in runs(figure)]
    if len(values) < 2:
        return ""
    return " (runs: " + ", ".join(fmt(v, digits=digits) for v in values) + ")"


def verdict(ok):
    return "n/a" if ok is None else ("yes" if ok else "**no**")


table = []


def row(figure, value, target, met, go="—"):
    table.append((figure, value, target, verdict(met), go))


reps = meta["reps"]
# 1. HTTP creation
v = median("http_create", "created_per_second")
if v is not None:
    client = next((r.get("client", "oha") for r in rows if r["figure"] == "http_create"), "wrk")
    row(f"Task creation, HTTP keep-alive, 64 connections ({client})",
        fmt(v, " tasks/s") + spread("http_create", "created_per_second"),
        ">= 30,000 tasks/s", v >= 30000, "~1,000 tasks/s (HTTP-bound)")
# 2. p99 at 10k/s
v = median("http_p99", "p99_ms")
if v is not None:
    achieved = median("http_p99", "created_per_second")
    row("p99 latency at a fixed 10,000 tasks/s, open loop",
        fmt(v, " ms", 2) + spread("http_p99", "p99_ms", 2) + f"; p50 {fmt(median('http_p99', 'p50_ms'), ' ms', 2)}"
        + f"; achieved {fmt(achieved, '/s')}",
        "<= 5 ms", v <= 5 and achieved is not None and achieved >= 9500)
# 3. delivery
v = median("delivery", "per_second")
if v is not None:
    n = runs("delivery")[0]["count"]
    row(f"Delivery, {n:,} tasks all due at once (first publish to last ack)",
        fmt(v, " tasks/s") + spread("delivery", "per_second")
        + f"; from service start {fmt(median('delivery', 'per_second_from_service_start'), '/s')}",
        ">= 50,000 tasks/s", v >= 50000, "~500 deliveries/s (Kafka-bound)")
# 4. lateness
for rate in (1000, 20000):
    fig = f"lateness_{rate}"
    v = median(fig, "p99_ms")
    if v is not None:
        achieved = median(fig, "published_per_second")
        row(f"Lateness at a steady {rate:,} tasks/s (p50 / p99)",
            f"{fmt(median(fig, 'p50_ms'), ' ms')} / {fmt(v, ' ms')}" + spread(fig, "p99_ms")
            + f"; published {fmt(achieved, '/s')}; incl. the first {runs(fig)[0].get('warmup_ms', 0) / 1000:g} s "
            + f"after start: p99 {fmt(median(fig, 'all_p99_ms'), ' ms')}, max {fmt(median(fig, 'all_max_ms'), ' ms')}",
            "p99 <= 50 ms", v <= 50, "up to 1 s (polls every POLL_INTERVAL)")
# 5. claim cost
claims = sorted({r["figure"] for r in rows if r["figure"].startswith("claim_")},
                key=lambda f: int(f.split("_")[1]))
if claims:
    values = [(int(f.split("_")[1]), median(f, "per_second")) for f in claims]
    text = "; ".join(f"{p:,} pending: {fmt(v, '/s')}" for p, v in values)
    forks = sum(r.get("redis_forks", 0) for f in claims for r in runs(f))
    text += f"; Redis forked {forks} time(s) while measuring" if forks else ""
    known = [v for _, v in values if v]
    flat = (min(known) >= 0.8 * max(known)) if len(known) > 1 else None
    row(f"Claim cost: delivery rate of {runs(claims[0])[0]['count']:,} due tasks",
        text, "flat (within 20%)", flat)
# 6. memory
hwm = [(r.get("vmhwm_kb") or 0, r["figure"]) for r in rows if r.get("vmhwm_kb")]
if hwm:
    kb, where = max(hwm)
    row("Service peak RSS (VmHWM) under load", f"{kb / 1024:,.1f} MB (in {where})",
        "<= 100 MB", kb / 1024 <= 100)
mem = runs("redis_memory")
if mem:
    m = mem[0]
    per_task = (m["used_memory_after"] - m["used_memory_before"]) / m["pending"]
    per_key = m["memory_usage_keys"] / m["pending"]
    beyond = per_task - m["payload_bytes"]
    row(f"Redis memory per pending task at {m['pending']:,} pending",
        f"{per_task:,.0f} B ({beyond:,.0f} B beyond the {m['payload_bytes']} B payload; "
        f"MEMORY USAGE {per_key:,.0f} B; record {m['record_bytes']} B)",
        "<= 300 B + payload", beyond <= 300)

print(f"\n## kafka-retry benchmark: {meta['mode']} mode, median of {reps} run(s)\n")
print(f"{meta['started']} · git {meta['git']} · {meta['nproc']} cores ({meta['cpu']}) · "
      f"{int(meta['mem_total_kb']) / 1048576:.0f} GiB · Redis {meta['redis']} · wrk {meta.get('wrk', '?')} · oha {meta['oha']} · "
      f"payload {meta['payload_bytes']} B · {meta['partitions']} partition(s)"
      + (f" · service settings: {meta['service_env']}" if meta.get("service_env") else "") + "\n")
print("| Figure | Value | Target | Met | Go README |")
print("|---|---|---|---|---|")
for figure, value, target, met, go in table:
    print(f"| {figure} | {value} | {target} | {met} | {go} |")

warnings = []
for r in rows:
    if r.get("non_201"):
        warnings.append(f"{r['figure']} run {r['rep']}: {r['non_201']} responses were not 201 "
                        f"(errors {r.get('errors')}); only 201s are counted")
    if r.get("stored") is not None and r["stored"] < r.get("created", 0):
        warnings.append(f"{r['figure']} run {r['rep']}: {r['created']} tasks answered as created, "
                        f"but Redis gained only {r['stored']}")
    p = r.get("preload")
    if isinstance(p, dict) and r.get("first_due") and p.get("finished_at", 0) > r["first_due"]:
        warnings.append(f"{r['figure']} run {r['rep']}: the preload ended "
                        f"{p['finished_at'] - r['first_due']} ms after the first task fell due")
    if r["figure"] == "redis_memory":
        delta = r["used_memory_after"] - r["used_memory_before"]
        if not 0.8 * r["memory_usage_keys"] <= delta <= 1.25 * r["memory_usage_keys"]:
            warnings.append("redis_memory: used_memory moved by other clients too (delta "
                            f"{delta:,} B vs MEMORY USAGE {r['memory_usage_keys']:,} B); "
                            "trust MEMORY USAGE")
    if r.get("redis_forks"):
        warnings.append(f"{r['figure']} run {r['rep']}: Redis forked {r['redis_forks']} time(s) "
                        "during the run (an AOF rewrite or snapshot of the whole data set)")
    if r.get("reached") is False or (r.get("expected") and r.get("received", 0) < r["expected"]):
        warnings.append(f"{r['figure']} run {r['rep']}: not every task reached Kafka in time")
if warnings:
    print("\nWarnings:\n")
    for w in warnings:
        print(f"- {w}")

print("\nCPU while measuring (cores busy, median of runs; 2.0 = the whole machine):\n")
print("| Figure | service | redis | kafka | load generator | other processes | whole machine |")
print("|---|---|---|---|---|---|---|")
figures = []
for r in rows:
    if "cpu" in r and r["figure"] not in figures:
        figures.append(r["figure"])
for fig in figures:
    cpu = [r["cpu"] for r in runs(fig) if "cpu" in r]
    def med(k):
        values = [c[k] for c in cpu if k in c]
        return f"{statistics.median(values):.2f}" if values else "—"
    others = [c["machine_busy"] - sum(c.get(k, 0) for k in ("service", "redis", "kafka", "loadgen"))
              for c in cpu]
    print(f"| {fig} | {med('service')} | {med('redis')} | {med('kafka')} | {med('loadgen')} | "
          f"{statistics.median(others):.2f} | {med('machine_busy')} |")
print("\nCPU time per task (µs of CPU per task created or delivered, median of runs; steadier than "
      "the rates on a shared machine):\n")
print("| Figure | service | redis | kafka | load generator | sum |")
print("|---|---|---|---|---|---|")
for fig in figures:
    per = []
    for r in runs(fig):
        c = r.get("cpu")
        tasks = r.get("created") or r.get("received") or r.get("count")
        if not c or not tasks:
            continue
        per.append({k: c[k] * c["seconds"] * 1e6 / tasks
                    for k in ("service", "redis", "kafka", "loadgen") if k in c})
    if not per:
        continue
    def us(k):
        values = [p[k] for p in per if k in p]
        return f"{statistics.median(values):.1f}" if values else "—"
    total = statistics.median(sum(p.values()) for p in per)
    print(f"| {fig} | {us('service')} | {us('redis')} | {us('kafka')} | {us('loadgen')} | {total:.1f} |")

print(f"\nMeasuring took {measure_s} s; the whole run {total_s} s (build {meta['build_seconds']} s). "
      f"Raw results: {out}/results.jsonl")
