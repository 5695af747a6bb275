-- wrk script for scripts/bench: every request carries one of the bench's
-- known keys in X-Api-Key, in rotation (the file named after `--` has one
-- key a line), and the run ends with one line of JSON for the script to read.
local requests = {}
local count, next_index = 0, 0

function init(args)
    for key in io.lines(args[1]) do
        count = count + 1
        requests[count] = wrk.format("GET", "/index.html", { ["X-Api-Key"] = key })
    end
    assert(count > 0, "no keys in " .. args[1])
end

function request()
    next_index = next_index % count + 1
    return requests[next_index]
end

function done(summary, latency, _)
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
        '"p999_us":%d,"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
        '"status_errors":%d,"timeouts":%d}\n',
        summary.requests, summary.duration, latency:percentile(50),
        latency:percentile(99), latency:percentile(99.9), latency.max, e.connect, e.read, e.write,
        e.status, e.timeout))
end
