-- wrk script for GET …/queue/{ticket}: each request asks about one of the tickets listed in the
-- file named by the first argument (one path per line), in turn; the token is the second argument.
local paths, token, n = {}, nil, 0

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  token = args[2]
  n = math.random(#paths)
end

function request()
  n = n % #paths + 1
  return wrk.format("GET", paths[n], {["Authorization"] = "Bearer " .. token})
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
