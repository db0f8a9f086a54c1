-- wrk script: the reservation of http_reserve.lua at a fixed offered rate (wrk is otherwise closed-loop).
-- Usage: wrk -s scripts/bench/http_paced.lua URL -- <campaign id> <storefront token> <run tag> <req/s per thread>
--
-- Each thread keeps a schedule, one slot every 1/rate s; before each request a connection claims the
-- next slot and waits for it (delay()). With many more connections than requests in flight, a
-- request goes out when it is due, so the offered load holds whatever the latency; the latency
-- counts from when the request was written (wrk's own measure).

local ffi = require("ffi")
ffi.cdef[[
  struct fs_timeval { long tv_sec; long tv_usec; };
  int gettimeofday(struct fs_timeval *tv, void *tz);
]]
local tv = ffi.new("struct fs_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

function init(args)
  cid, token, tag = args[1], args[2], args[3]
  interval = 1000 / tonumber(args[4])
  path = "/v1/campaigns/" .. cid .. "/reservations"
  n = 0
  due = nil
end

function delay()
  local now = now_ms()
  if due == nil then due = now end
  due = due + interval
  local wait = due - now
  if wait < 0 then return 0 end
  return wait
end

function request()
  n = n + 1
  local body = '{"user_id":"p' .. id .. '-' .. (n % 50000) .. '","product_id":"p1","units":1}'
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
