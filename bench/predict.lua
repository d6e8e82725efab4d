-- wrk script: POST /predict with a different body each request.
-- wrk ... -s bench/predict.lua URL -- BODIES_FILE [OFFSET]
-- BODIES_FILE holds one JSON body per line; WRK_OUT names the JSON summary file.
local bodies = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  counter = tonumber(args[2] or "0")
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"},
                    bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local errors = summary.errors
  local out = io.open(os.getenv("WRK_OUT") or "wrk-summary.json", "w")
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
  out:close()
end
