--[[
  Reserve units for a batch of requests against one campaign: each request is judged on its
  own, in arrival order, against the state the requests before it left.

  KEYS[1] meta hash        KEYS[2] counters hash    KEYS[3] users hash
  KEYS[4] reservations     KEYS[5] idempotency hash KEYS[6] holds zset (score: deadline ms)
  KEYS[7] events stream    KEYS[8] rate ring hash   KEYS[9] rate limiter hash
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 6 values per request i, from ARGV[2 + 6*(i-1)]:
    reservation id to use if one is created · storefront name · Idempotency-Key ·
    user id (no '|') · product id · units (int, 1..10^12)

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 new | 1 replay)}   the record is msgpack:
      {state, product, user, units, amount, expires_ms, created_ms, storefront, key, ref, confirmed_ms}
      (a replayed hold past its deadline is shown 'expired'; the sweeper writes it)
    {code < 0, detail, '', 0}   codes in engine/status.py; detail: remaining units
      (INSUFFICIENT_STOCK), units still allowed (USER_CAP_EXCEEDED), ms to wait (RATE_LIMITED),
      the product id (PRODUCT_NOT_FOUND, SOLD_OUT), the stored reservation id
      (RESERVATION_NOT_FOUND: the key points at a record that is gone; DAMAGED_RECORD: at a
      record cmsgpack cannot read or of the wrong shape: that request alone is refused)
  Malformed ARGV fails the whole batch with an error reply, before any read or write; so does a
  campaign whose stored price or total is out of the bounds engine/campaign.py enforces (price
  1..10^9, total 1..10^12, total × price <= 2^53), before any write. Within them, a request whose
  units × price would pass 2^53 asks for more than the tranche: INSUFFICIENT_STOCK, like any other.
  The users hash gets each new hold's units per user (t|UID), per product (t|UID|PID) and per
  storefront (t|UID|PID|SF): caps count the first two, a storefront sees only the last.

  Order of checks: idempotency (a replay returns the first reservation, as it is now; rejections
  are not remembered, so a retry after one is judged afresh), product, rate limit (GCRA; an
  attempt counts even if rejected later; replays do not count), window and state, caps, stock.
  No request writes anything until every request of the batch is judged: the loop below only
  reads and fills tables, and the writes follow it, folded into one call per key.
  Each new reservation appends a 'reserved' event (engine/events.py) that carries its storefront
  and Idempotency-Key, so `flashsale recover` can rebuild the idempotency hash from the ledger.

  Cost (this script is most of Redis's CPU in a sale): every redis.call has a fixed price, so
  what the batch reads per request (its Idempotency-Key, its user's rate limiter state and
  counters) comes in one HMGET per hash for the whole batch, not one HGET per request. Redis 7.0
  turns a Lua number argument into text with a slow '%.17g', so the integers that recur (now,
  the deadline, units, amounts) go as text made once ('%d' reads the same below 2^53). A new
  record's msgpack is put together from pieces made once per batch: cmsgpack.pack of the table
  costs more than the rest of the reservation's Lua.
]]
local rcall = redis.call
local tonumber, floor, fmt, find = tonumber, math.floor, string.format, string.find
local pack = cmsgpack.pack
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local PRODUCT_NOT_FOUND = -2
local RESERVATION_NOT_FOUND = -3
local NOT_OPEN = -4
local CLOSED = -5
local PAUSED = -6
local SOLD_OUT = -7
local INSUFFICIENT_STOCK = -8
local USER_CAP_EXCEEDED = -9
local IDEMPOTENCY_KEY_REUSED = -10
local RECOVERING = -13
local RATE_LIMITED = -14
local DAMAGED_RECORD = -15
local REJECTION_NAME = {
  [NOT_OPEN] = 'NOT_OPEN', [CLOSED] = 'CLOSED', [PAUSED] = 'PAUSED', [SOLD_OUT] = 'SOLD_OUT',
  [INSUFFICIENT_STOCK] = 'INSUFFICIENT_STOCK', [USER_CAP_EXCEEDED] = 'USER_CAP_EXCEEDED',
  [IDEMPOTENCY_KEY_REUSED] = 'IDEMPOTENCY_KEY_REUSED', [RATE_LIMITED] = 'RATE_LIMITED',
}
local STRIDE = 6
local RING = 120  -- seconds kept in the rate ring
local MAX_UNITS = 1e12             -- engine/campaign.py MAX_UNITS
local MAX_PRICE = 1e9              -- engine/campaign.py MAX_PRICE
local MAX_AMOUNT = 9007199254740992  -- engine/campaign.py MAX_AMOUNT (2^53): money stays exact
-- A new record, as cmsgpack.pack({'held', pid, uid, units, amount, exp, now, sf, key, '', 0})
-- writes it: the header of an 11-element array, then each value's msgpack (a string's is a
-- header, by its length, then its bytes), put together from pieces made once per batch.
local RECORD_HEAD = '\155\164held'  -- fixarray of 11, fixstr of 4: 'held'
local RECORD_TAIL = '\160\0'        -- fixstr of 0: '', positive fixint: 0
local E_UNITS = 'ERR reserve: units must be an integer in 1..10^12'
local E_IDS = 'ERR reserve: empty reservation id, or a user id with |'

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR reserve: ARGV must be n then 6 values per request')
end

-- Check every request, and name the fields the batch reads: Idempotency-Keys, user ids.
local CHUNK = 2000  -- arguments per call at most: unpack() of more overflows Lua's C stack
local ikeys, uids = {}, {}
for i = 1, n do
  local b = 1 + STRIDE * (i - 1)
  local u = tonumber(ARGV[b + 6])
  if not u or u < 1 or u > MAX_UNITS or u ~= floor(u) then return redis.error_reply(E_UNITS) end
  local uid = ARGV[b + 4]
  if ARGV[b + 1] == '' or find(uid, '|', 1, true) then return redis.error_reply(E_IDS) end
  ikeys[i] = ARGV[b + 2] .. '|' .. ARGV[b + 3]
  uids[i] = uid
end

-- HMGET of many fields, in calls of at most CHUNK of them.
local function hmget(key, fields)
  if #fields <= CHUNK then return rcall('HMGET', key, unpack(fields)) end
  local got = {}
  for i = 1, #fields, CHUNK do
    local part = rcall('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do got[i + j - 1] = part[j] end
  end
  return got
end

-- A number as Redis would write it ('%.17g'), made cheaply when it is a positive integer.
local function text(x)
  if x > 0 and x < 9007199254740992 and x == floor(x) then return fmt('%d', x) end
  return x
end

local out, no = {}, 0
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local m = rcall('HMGET', KEYS[1], 'opens', 'closes', 'hold', 'price', 'total', 'cap', 'flag',
  'rl_rate', 'rl_burst')
if not m[1] then
  for i = 1, n do
    out[no + 1] = CAMPAIGN_NOT_FOUND; out[no + 2] = ''; out[no + 3] = ''; out[no + 4] = 0
    no = no + 4
  end
  return out
end
local opens, closes, hold, price = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local total, ccap, flag = tonumber(m[5]), tonumber(m[6]), m[7]
if not price or price < 1 or price > MAX_PRICE or price ~= floor(price) or not total or total < 1
    or total > MAX_UNITS or total ~= floor(total) or total * price > MAX_AMOUNT then
  return redis.error_reply('ERR reserve: the campaign\'s stored price or total is out of bounds')
end
local emission = 1000 / tonumber(m[8])             -- ms between attempts at the sustained rate
local tolerance = emission * (tonumber(m[9]) - 1)  -- a burst of rl_burst attempts is allowed
local window = OK
if flag == 'recovering' then window = RECOVERING
elseif flag == 'closed' or now >= closes then window = CLOSED
elseif now < opens then window = NOT_OPEN
elseif flag == 'paused' then window = PAUSED end
local exp = now + hold
local now_text, exp_text = text(now), text(exp)
local packed_units = {}  -- units -> msgpack of units, amount, exp, now
local str_header = {}    -- length -> msgpack header of a string that long
local function packed_header(s)
  local len = #s
  local h
  if len < 32 then h = string.char(160 + len)  -- fixstr
  else h = string.sub(pack(s), 1, -len - 1) end
  str_header[len] = h
  return h
end

-- Everything read once per batch, changed in these tables, written once at the end.
local c = rcall('HMGET', KEYS[2], 'sold', 'held')
local csold, cheld = tonumber(c[1]) or 0, tonumber(c[2]) or 0
local stored_idem = hmget(KEYS[5], ikeys)  -- request i -> the stored reservation id, or false
local stored_tat = hmget(KEYS[9], uids)     -- request i -> its user's stored arrival time, or false
local stored_users = nil  -- request i -> its user's three stored counters at 3i-2 .. 3i, or false
local users_fields = nil  -- ... and the names of those fields
local users_from = 0      -- ... read at the first request that needs them, for it and the rest
local products = {}  -- pid -> {total, cap, sold, held, held0} or false (no such product)
local users = {}     -- users hash field -> units taken (held + confirmed)
local users_changed = {}  -- users hash field -> true once a reservation adds to it
local tats = {}      -- uid -> rate limiter theoretical arrival time (ms)
local rejected = {}  -- code name -> count
local new_res, new_idem, new_holds, events = {}, {}, {}, {}  -- events: ARGV base of each new one
local nholds, nevents = 0, 0
local taken = 0

local function load_product(pid)
  local pm = rcall('HMGET', KEYS[1], 'total|' .. pid, 'cap|' .. pid)
  if not pm[1] then products[pid] = false; return false end
  local pc = rcall('HMGET', KEYS[2], 'sold|' .. pid, 'held|' .. pid)
  local p = {total = tonumber(pm[1]), cap = tonumber(pm[2]), sold = tonumber(pc[1]) or 0,
    held = tonumber(pc[2]) or 0}
  p.held0 = p.held
  products[pid] = p
  return p
end

-- Units the user of request i has taken in the campaign (fu) and of the product (fup).
local function user_taken(i, fu, fup)
  local vu, vup = users[fu], users[fup]
  if vu == nil or vup == nil then
    if not stored_users then
      local fields = {}
      for j = i, n do
        local b = 1 + STRIDE * (j - 1)
        local f = 't|' .. ARGV[b + 4]
        local fp = f .. '|' .. ARGV[b + 5]
        local k = 3 * (j - i)
        fields[k + 1] = f; fields[k + 2] = fp; fields[k + 3] = fp .. '|' .. ARGV[b + 2]
      end
      stored_users, users_fields, users_from = hmget(KEYS[3], fields), fields, i
    end
    local k = 3 * (i - users_from)
    if vu == nil then vu = tonumber(stored_users[k + 1]) or 0; users[fu] = vu end
    if vup == nil then vup = tonumber(stored_users[k + 2]) or 0; users[fup] = vup end
  end
  return vu, vup
end

local function reply(code, detail, packed, replayed)
  out[no + 1] = code; out[no + 2] = detail; out[no + 3] = packed; out[no + 4] = replayed
  no = no + 4
end

local function reject(code, detail)
  local name = REJECTION_NAME[code]
  if name then rejected[name] = (rejected[name] or 0) + 1 end
  reply(code, detail, '', 0)
end

-- A replay answers with the reservation as it is now; a hold past its deadline reads as expired.
local function replay(prior, pid, uid, units)
  local packed = new_res[prior] or rcall('HGET', KEYS[4], prior)
  if not packed then return reject(RESERVATION_NOT_FOUND, prior) end
  local ok, r = pcall(cmsgpack.unpack, packed)
  if not ok or type(r) ~= 'table' or type(r[6]) ~= 'number' then
    return reply(DAMAGED_RECORD, prior, '', 0)
  end
  if r[2] ~= pid or r[3] ~= uid or r[4] ~= units then return reject(IDEMPOTENCY_KEY_REUSED, '') end
  if r[1] == 'held' and now >= r[6] then
    r[1] = 'expired'
    packed = pack(r)
  end
  reply(OK, prior, packed, 1)
end

local function judge(i, b, rid, sf, key, uid, pid, units)
  local ikey = ikeys[i]
  local prior = new_idem[ikey] or stored_idem[i]
  if prior then return replay(prior, pid, uid, units) end
  local p = products[pid]
  if p == nil then p = load_product(pid) end
  if not p then return reject(PRODUCT_NOT_FOUND, pid) end
  local tat = tats[uid]
  if tat == nil then tat = tonumber(stored_tat[i]) or 0 end
  if tat < now then tat = now end
  local wait = tat - now - tolerance
  if wait > 0 then return reject(RATE_LIMITED, math.ceil(wait)) end
  tats[uid] = tat + emission
  if window ~= OK then return reject(window, '') end
  local fu = 't|' .. uid
  local fup = fu .. '|' .. pid
  local pcap = p.cap
  local vu, vup
  if pcap or ccap then
    vu, vup = user_taken(i, fu, fup)
    local allowed = nil
    if pcap then allowed = pcap - vup end
    if ccap then
      local a = ccap - vu
      if allowed == nil or a < allowed then allowed = a end
    end
    if units > allowed then return reject(USER_CAP_EXCEEDED, math.max(allowed, 0)) end
  end
  local remaining = total - csold - cheld
  local premaining = p.total - p.sold - p.held
  if premaining < remaining then remaining = premaining end
  if remaining <= 0 then return reject(SOLD_OUT, pid) end
  if units > remaining or units * price > MAX_AMOUNT then return reject(INSUFFICIENT_STOCK, remaining) end
  if not vu then vu, vup = user_taken(i, fu, fup) end
  local pu = packed_units[units]
  if not pu then pu = pack(units, units * price, exp, now); packed_units[units] = pu end
  local packed = RECORD_HEAD .. (str_header[#pid] or packed_header(pid)) .. pid
    .. (str_header[#uid] or packed_header(uid)) .. uid .. pu
    .. (str_header[#sf] or packed_header(sf)) .. sf .. (str_header[#key] or packed_header(key)) .. key
    .. RECORD_TAIL
  p.held = p.held + units
  cheld = cheld + units
  users[fu] = vu + units; users_changed[fu] = true
  users[fup] = vup + units; users_changed[fup] = true
  local k = 3 * (i - users_from) + 3
  local fups = users_fields[k]  -- t|UID|PID|SF: this storefront's units of the user's product
  local vups = users[fups]
  if vups == nil then vups = tonumber(stored_users[k]) or 0 end
  users[fups] = vups + units; users_changed[fups] = true
  new_res[rid] = packed
  new_idem[ikey] = rid
  new_holds[nholds + 1] = exp_text
  new_holds[nholds + 2] = rid
  nholds = nholds + 2
  nevents = nevents + 1
  events[nevents] = b
  taken = taken + units
  reply(OK, rid, packed, 0)
end

for i = 1, n do
  local b = 1 + STRIDE * (i - 1)  -- b + 1 .. b + 6: the request's values
  judge(i, b, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], uids[i], ARGV[b + 5], tonumber(ARGV[b + 6]))
end

-- The batch's writes, folded: one call per key (one XADD per new reservation), in calls of at
-- most CHUNK arguments.
local function call_chunked(cmd, key, args)
  for i = 1, #args, CHUNK do
    rcall(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end
local function flush_hash(key, tbl)
  local args, k = {}, 0
  for f, v in pairs(tbl) do args[k + 1] = f; args[k + 2] = v; k = k + 2 end
  call_chunked('HSET', key, args)
end
if taken > 0 then
  local cargs = {'held', cheld}
  for pid, p in pairs(products) do
    if p and p.held ~= p.held0 then cargs[#cargs + 1] = 'held|' .. pid; cargs[#cargs + 1] = p.held end
  end
  call_chunked('HSET', KEYS[2], cargs)
  local uargs, k = {}, 0
  for f in pairs(users_changed) do uargs[k + 1] = f; uargs[k + 2] = text(users[f]); k = k + 2 end
  call_chunked('HSET', KEYS[3], uargs)
  flush_hash(KEYS[4], new_res)
  flush_hash(KEYS[5], new_idem)
  call_chunked('ZADD', KEYS[6], new_holds)
  local units_text, amount_text = {}, {}  -- units -> its text, and that of its amount
  for j = 1, nevents do
    local b = events[j]
    local units = tonumber(ARGV[b + 6])
    local ut = units_text[units]
    if not ut then
      ut = text(units); units_text[units] = ut
      amount_text[units] = fmt('%d', units * price)
    end
    rcall('XADD', KEYS[7], '*', 'e', 'reserved', 'rid', ARGV[b + 1], 'pid', ARGV[b + 5],
      'uid', ARGV[b + 4], 'units', ut, 'amount', amount_text[units], 'at', now_text,
      'sf', ARGV[b + 2], 'exp', exp_text, 'key', ARGV[b + 3])
  end
  local sec = floor(now / 1000)
  local slot = tostring(sec % RING)
  if tonumber(rcall('HGET', KEYS[8], 's' .. slot)) == sec then
    rcall('HINCRBY', KEYS[8], 'u' .. slot, taken)
  else
    rcall('HSET', KEYS[8], 's' .. slot, sec, 'u' .. slot, taken)
  end
end
flush_hash(KEYS[9], tats)
for name, count in pairs(rejected) do rcall('HINCRBY', KEYS[2], 'rej|' .. name, count) end
return out
