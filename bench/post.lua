-- wrk script for figure 1 (bench/run.sh): POSTs the task body in BENCH_TASK_BODY on every
-- request and prints wrk's summary as one line, `WRK_JSON {...}`, for the harness to read.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = assert(os.getenv("BENCH_TASK_BODY"), "BENCH_TASK_BODY is not set")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
