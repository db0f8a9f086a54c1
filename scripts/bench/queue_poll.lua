-- wrk script for GET …/queue/{ticket}: each request asks about one of the tickets listed in the
-- file named by the first argument (one path per line); the token is the second argument.
-- The third: "turn" (every thread walks the whole list in turn, each from its own offset, so the
-- threads do not ask about the same ticket at once) or "once" (the threads share the list out and
-- each stops once it has had an answer for each of its tickets: every ticket's first poll); the
-- fourth: the number of threads (wrk's -t).
local paths, token, n, answered, once = {}, nil, 0, 0, false
local started = 0

function setup(thread)
  thread:set("id", started)
  started = started + 1
end

function init(args)
  local threads = tonumber(args[4])
  local i = 0
  once = args[3] == "once"
  for line in io.lines(args[1]) do
    if not once or i % threads == id then
      paths[#paths + 1] = line
    end
    i = i + 1
  end
  token = args[2]
  if once then
    n = 0
  else
    n = math.floor(#paths * id / threads)
    response = nil -- no per-response work in the timed run
  end
end

function request()
  n = n % #paths + 1
  return wrk.format("GET", paths[n], {["Authorization"] = "Bearer " .. token})
end

function response(status, headers, body)
  answered = answered + 1
  if answered >= #paths then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
