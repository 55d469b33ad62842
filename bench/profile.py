#!/usr/bin/env python3
"""Sums a `perf record --call-graph dwarf` profile of the service (and Redis) by component, so that
the question "what limits this figure" has numbers: for each sample, the frames are walked from the
leaf towards the root and the first frame that names a component gets the sample (so malloc inside
JSON encoding counts as JSON encoding; a sample with no component frame counts by where it ran).

Usage: perf script -i perf-http.data | bench/profile.py [--top 25]
"""

import re
import sys
from collections import Counter, defaultdict

# (component, regex on the frame's symbol), checked in this order for every frame, leaf first.
COMPONENTS = [
    ("logging (tracing)", r"tracing_subscriber|tracing_core::|tracing::span|EnvFilter"),
    ("JSON decode (HTTP request bodies; task records read back by a claim)",
     r"serde_path_to_error|parse_body|serde_json::de::|TaskRequest.*Deserialize|"
     r"<kafka_retry::domain::task::\w*Request\w* as serde::de"),
    ("JSON encode (task records written to Redis)",
     r"redis_store::encode|serde_json::ser::|Task as serde::ser|serde::ser::Serializer::collect_str"),
    ("response JSON (serde_json::json!)", r"serde_json::value::|IntoResponse for axum::json::Json"),
    ("Kafka message build / headers (kafka_publisher)",
     r"kafka_publisher::|Task>::message|OwnedHeaders|FutureRecord"),
    ("librdkafka", r"^rd_kafka|rdkafka_sys|^rd_|librdkafka|rdkafka::"),
    ("Redis client (redis crate: command encode, reply parse)", r"^redis::|<redis::|combine::"),
    ("Lua script (Redis side)", r"^lua|luaV_|luaD_|luaH_|evalGenericCommand|scriptCall|luaRedis"),
    ("Redis commands (server side)",
     r"^zaddCommand|^zsl|^hsetCommand|^hashType|^execCommand|^multiCommand|^call$|processCommand|"
     r"^zrange|^zremCommand|^genericZ|"
     r"dictAdd|dictFind|listpack|lp[A-Z]|zzl|^hget|hmget|ziplist|dictExpand|_dictRehash|"
     r"^createString|sdsnew|sdscat"),
    ("Redis AOF/replies/networking (server side)",
     r"feedAppendOnlyFile|catAppendOnly|addReply|_addReply|writeToClient|readQueryFromClient|"
     r"processInputBuffer|processMultibulk|handleClientsWithPendingWrites|aeProcessEvents|"
     r"connSocket"),
    ("ULID / id to string", r"ulid::|TaskId as core::fmt"),
    ("HTTP handlers and middleware (kafka_retry::http)", r"^kafka_retry::http::"),
    ("HTTP server (hyper, axum, tower)", r"hyper::|hyper_util::|axum::|tower::|tower_http::|httparse|http::header"),
    ("tokio runtime (scheduler, timers, I/O driver)", r"^tokio::|<tokio::|mio::"),
    ("domain (TaskService, validation, backoff)", r"kafka_retry::domain::|kafka_retry::worker::"),
    ("memory allocation (malloc/free)", r"malloc|_int_free|cfree|realloc|unlink_chunk|__libc_calloc|__GI___libc_free"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in COMPONENTS]

# Inclusive shares: a sample counts for every one of these that appears anywhere on its stack
# (layers that wrap the whole request, such as hyper's dispatcher or tower middleware, would
# count everything and are left out; the exclusive table above covers them).
INCLUSIVE = [
    ("TaskService::create / create_many", r"domain::service::(\{impl#\d+\}|TaskService)::create"),
    ("RedisStore create/create_many (encode, pipeline/script, reply)",
     r"redis_store::(\{impl#\d+\}|RedisStore)::create"),
    ("redis crate (multiplexed connection, encode, parse)", r"^redis::"),
    ("serde_json (any)", r"^serde_json::|serde_path_to_error"),
    ("tracing (spans and events)", r"^tracing|tracing_subscriber"),
    ("TaskService::deliver_due", r"deliver_due::\{async_fn"),
    ("RedisStore::claim_due (script, decode)", r"redis_store::(\{impl#\d+\}|RedisStore)::claim_due"),
    ("RedisStore::settle", r"redis_store::(\{impl#\d+\}|RedisStore)::settle"),
    ("KafkaPublisher::publish (record, headers, send)",
     r"kafka_publisher::(\{impl#\d+\}|KafkaPublisher)::publish"),
    ("librdkafka (rd_kafka_*)", r"^rd_kafka|^rd_"),
    ("kernel: socket writes (on loopback they also run the peer's receive path)",
     r"sys_write|sys_writev|sys_sendmsg|sys_sendto|tcp_sendmsg|sock_write_iter"),
    ("kernel: socket reads", r"sys_read|sys_recvfrom|sys_recvmsg|tcp_recvmsg|sock_read_iter"),
    ("syscalls: epoll_wait / futex", r"sys_epoll|sys_futex|epoll_wait"),
    ("malloc/free", r"malloc|_int_free|cfree|realloc|__libc_free"),
]
INCLUSIVE_COMPILED = [(name, re.compile(rx)) for name, rx in INCLUSIVE]

SYSCALL_KINDS = [
    ("kernel: socket send (write/sendmsg)", r"sys_write|sys_writev|sys_sendto|sys_sendmsg|tcp_sendmsg|sock_write_iter"),
    ("kernel: socket receive (read/recvmsg)", r"sys_read|sys_recvfrom|sys_recvmsg|tcp_recvmsg|sock_read_iter"),
    ("kernel: epoll / futex / scheduling", r"epoll|futex|schedule|finish_task_switch|do_nanosleep|pick_next"),
    ("kernel: disk (AOF fsync/write)", r"ext4|fsync|jbd2|blk_"),
]
SYSCALL_COMPILED = [(name, re.compile(rx)) for name, rx in SYSCALL_KINDS]


def path_of(sym):
    """The function's path without generic parameters: `<A<T> as B>::f` -> `A::f` (the type's
    path, not the generic arguments, says which component a frame belongs to)."""
    if sym.startswith("<"):
        depth, i = 0, 0
        for i, ch in enumerate(sym):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 1 and sym.startswith(" as ", i):
                break
            if depth == 0:
                break
        head = sym[1:i]
        tail = sym[sym.find(">::", i) + 1:] if ">::" in sym[i:] else ""
        sym = head + tail
    out, depth = [], 0
    for ch in sym:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def classify(frames, comm):
    """frames: list of (symbol, dso), leaf first. Allocation counts for the component that
    allocates, unless no frame names one."""
    kernel_kind = None
    allocation = False
    for sym, dso in frames:
        sym = path_of(sym)
        if dso.startswith("[kernel"):
            if kernel_kind is None:
                for name, rx in SYSCALL_COMPILED:
                    if rx.search(sym):
                        kernel_kind = name
                        break
            continue
        for name, rx in COMPILED:
            if rx.search(sym):
                if name.startswith("memory"):
                    allocation = True
                    break
                if kernel_kind and name.startswith("tokio"):
                    return kernel_kind
                return name
    if kernel_kind:
        return kernel_kind
    if allocation:
        return "memory allocation (malloc/free)"
    if frames and frames[0][1].startswith("[kernel"):
        return "kernel: other"
    return "other user space"


def main():
    top = 25
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
    by_proc = defaultdict(Counter)
    inclusive = defaultdict(Counter)
    leaf = defaultdict(Counter)
    totals = Counter()
    comm, pid, frames = None, None, []
    samples = []
    header = re.compile(r"^(\S.*?)\s+(\d+)(?:/(\d+))?\s+")
    frame = re.compile(r"^\s+[0-9a-f]+\s+(.+?)\s+\((.*)\)\s*$")

    def flush():
        if comm is not None:
            samples.append((comm, pid, frames))

    def account(comm, pid, frames, redis_pids):
        # By process, not thread name: Redis's threads include bio_* and jemalloc_bg_thd.
        proc = "redis-server" if pid in redis_pids else "service"
        name = classify(frames, comm)
        by_proc[proc][name] += 1
        names = [path_of(sym) for sym, _ in frames] + [sym for sym, _ in frames]
        for label, rx in INCLUSIVE_COMPILED:
            if any(rx.search(p) for p in names):
                inclusive[proc][label] += 1
        totals[proc] += 1
        if frames:
            leaf[proc][frames[0][0][:110]] += 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            comm, frames = None, []
            continue
        if not line[0].isspace():
            m = header.match(line)
            comm = m.group(1).strip() if m else line.split()[0]
            pid = m.group(2) if m else None
            frames = []
            continue
        m = frame.match(line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            dso = m.group(2).rsplit("/", 1)[-1]
            frames.append((sym, dso))
    flush()
    redis_pids = {p for c, p, _ in samples if c.startswith("redis-server")}
    for sample in samples:
        account(*sample, redis_pids)

    all_samples = sum(totals.values()) or 1
    for proc in sorted(by_proc, key=lambda p: -totals[p]):
        n = totals[proc]
        print(f"\n### {proc}: {n} samples ({100 * n / all_samples:.0f}% of all)\n")
        print("| component (first match from the leaf) | share of this process |")
        print("|---|---|")
        for name, count in by_proc[proc].most_common():
            print(f"| {name} | {100 * count / n:.1f}% |")
        if proc == "service":
            print("\n| on the stack (inclusive; overlaps) | share of this process |")
            print("|---|---|")
            for label, _ in INCLUSIVE:
                if inclusive[proc][label]:
                    print(f"| {label} | {100 * inclusive[proc][label] / n:.1f}% |")
        print(f"\nHottest leaf functions ({proc}):\n")
        for name, count in leaf[proc].most_common(top):
            print(f"    {100 * count / n:5.1f}%  {name}")


if __name__ == "__main__":
    main()
