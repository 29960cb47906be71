-- wrk script shared by every load row.
-- BENCH_TARGET, when set, is an absolute-form request target (RFC 9112 section 3.2.2):
-- the forward-proxy rows send `GET http://origin/path HTTP/1.1` to the proxy.
local target = os.getenv("BENCH_TARGET")
if target and target ~= "" then
  wrk.path = target
  wrk.headers["Host"] = os.getenv("BENCH_HOST")
end
-- BENCH_ACCEPT_ENCODING, when set, is sent as Accept-Encoding (the compression rows).
local ae = os.getenv("BENCH_ACCEPT_ENCODING")
if ae and ae ~= "" then
  wrk.headers["Accept-Encoding"] = ae
end

-- One machine-readable line at the end, so the harness never scrapes wrk's text output.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
