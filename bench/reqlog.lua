-- wrk script: one line per request, for bench/switch_bench.py.
--
-- Run wrk with as many threads as connections (-t N -c N). Each wrk thread has its own Lua
-- state, and with one connection per thread request() and response() strictly alternate, so a
-- response belongs to the request sent just before it. (With several connections per thread
-- they interleave and nothing can be paired.)
--
-- Each thread writes $BENCH_LOG_DIR/req-<id>.tsv with the columns
--   start_us  status  latency_us  wait_us
-- start_us    CLOCK_REALTIME in microseconds when wrk called request(), just before the write;
-- status      the HTTP status, or -1 when no response came: the connection failed with the
--             request on it (read or write error, closed early); wrk then reconnects and
--             sends the next request, and that next request() call is when the failure is
--             recorded (latency_us runs until then, reconnection included);
-- latency_us  until the whole response was parsed (response());
-- wait_us     time between the end of the previous request on this connection and start_us:
--             about zero on a kept-alive connection, the reconnection (including refused
--             connection attempts, which wrk retries at once) after a close or a failure.
-- The main state writes $BENCH_LOG_DIR/summary.json with wrk's own counters in done().

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
unsigned long pthread_self(void);
]]

local CLOCK_REALTIME = 0
local ts = ffi.new("bench_timespec")

local function now_us()
    ffi.C.clock_gettime(CLOCK_REALTIME, ts)
    return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local log_dir = os.getenv("BENCH_LOG_DIR") or "."
local path = os.getenv("BENCH_PATH") or "/"

-- main state ---------------------------------------------------------------------------------

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

function done(summary, latency, requests)
    local e = summary.errors
    local f = assert(io.open(log_dir .. "/summary.json", "w"))
    f:write(string.format(
        '{"threads": %d, "duration_us": %.0f, "requests": %.0f, "bytes": %.0f, ' ..
        '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, ' ..
        '"latency_us": {"p50": %.0f, "p99": %.0f, "max": %.0f}}\n',
        #threads, summary.duration, summary.requests, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency.max))
    f:close()
end

-- thread states ------------------------------------------------------------------------------

local out, req
local main_thread      -- wrk calls request() once on the main OS thread to check it: not sent
local pending_start, pending_wait
local last_end

function init(args)
    main_thread = ffi.C.pthread_self()
    req = wrk.format("GET", path)
    out = assert(io.open(string.format("%s/req-%d.tsv", log_dir, id), "w"))
    out:setvbuf("full", 1048576)
end

function request()
    if main_thread ~= nil then
        if ffi.C.pthread_self() == main_thread then
            return req
        end
        main_thread = nil
    end
    local now = now_us()
    if pending_start then
        -- the previous request never got its response
        out:write(string.format("%.0f\t-1\t%.0f\t%.0f\n", pending_start, now - pending_start, pending_wait))
        last_end = now
    end
    pending_start = now
    pending_wait = last_end and (now - last_end) or 0
    return req
end

function response(status, headers, body)
    local now = now_us()
    if pending_start then
        out:write(string.format("%.0f\t%d\t%.0f\t%.0f\n", pending_start, status, now - pending_start,
                                pending_wait))
    end
    pending_start = nil
    last_end = now
end
