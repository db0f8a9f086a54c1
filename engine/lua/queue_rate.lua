--[[
  Change a waiting room's admission rate from now on (by Redis TIME); 0 pauses admission.

  KEYS[1] campaign meta hash   KEYS[2] admission hash   KEYS[3] queue zset
  ARGV[1] positions admitted per second from now (count >= 0)
  ARGV[2] most rate changes kept (count): beyond it the change is refused
  ARGV[3] opens_at (ms)   ARGV[4] the definition's admit_per_second (count)

  The admission hash keeps every change as `rates` = `at_ms:rate:base,...` in time order
  (`nrates` counts them; engine/admission/schedule.py reads them). `base` is the admitted
  frontier at `at_ms`, in position-milliseconds (positions x 1000), but never more than the
  tickets there are then: a pause stops admission for tickets taken afterwards, and no credit
  saved up while the queue was empty is handed out. Before opens_at the base is 0 (the change
  sets the opening rate). A change never takes back a position already admitted.
  Returns {OK, now ms}, or {CAMPAIGN_NOT_FOUND, ''}, or {INVALID_STATE, 'too_many_changes'}.
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local INVALID_STATE = -11

local rate, most, opens, rate0 = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if not rate or rate < 0 or rate ~= math.floor(rate) or not most or not opens or not rate0 then
  return redis.error_reply('ERR queue_rate: ARGV[1] rate >= 0, ARGV[2] limit, ARGV[3] opens ms, ARGV[4] rate')
end
if rcall('HEXISTS', KEYS[1], 'def') == 0 then return {CAMPAIGN_NOT_FOUND, ''} end
if tonumber(rcall('HGET', KEYS[2], 'nrates') or '0') >= most then return {INVALID_STATE, 'too_many_changes'} end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local old = rcall('HGET', KEYS[2], 'rates')
local start, r, base = opens, rate0, 0
if old then
  local at, lr, lb = string.match(old, '(%d+):(%d+):(%d+)$')
  start, r, base = math.max(tonumber(at), opens), tonumber(lr), tonumber(lb)
  if tonumber(at) <= opens then base = 0 end
end
local frontier = 0
if now >= start then frontier = base + r * (now - start) end
local cap = rcall('ZCARD', KEYS[3]) * 1000
if frontier > cap then frontier = cap end
if now <= opens then frontier = 0 end

local entry = string.format('%d:%d:%d', now, rate, frontier)
rcall('HSET', KEYS[2], 'rates', old and (old .. ',' .. entry) or entry)
rcall('HINCRBY', KEYS[2], 'nrates', 1)
return {OK, now}
