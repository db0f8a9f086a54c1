-- wrk script: POST /v1/campaigns/<cid>/reservations with a fresh Idempotency-Key and a varied user per
-- request, then one JSON line with the run's figures (done()).
-- Usage: wrk -s scripts/bench/http_reserve.lua URL -- <campaign id> <storefront token> <run tag>

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

function init(args)
  cid, token, tag = args[1], args[2], args[3]
  path = "/v1/campaigns/" .. cid .. "/reservations"
  n = 0
  users = 50000  -- distinct users per thread: each stays far below any rate limit
end

function request()
  n = n + 1
  local body = '{"user_id":"u' .. id .. '-' .. (n % users) .. '","product_id":"p1","units":1}'
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = tag .. "-" .. id .. "-" .. n,
    ["Content-Type"] = "application/json",
  }
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
