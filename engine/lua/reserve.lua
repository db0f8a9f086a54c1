--[[
  Reserve units for a batch of requests against one campaign: each request is judged on its
  own, in arrival order, against the state the requests before it left.

  KEYS[1] meta hash        KEYS[2] counters hash    KEYS[3] users hash
  KEYS[4] reservations     KEYS[5] idempotency hash KEYS[6] holds zset (score: deadline ms)
  KEYS[7] events stream    KEYS[8] rate ring hash   KEYS[9] rate limiter hash
  KEYS[10] registrations hash (engine/admission)     KEYS[11] buyers hash (units per signal)
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 7 values per request i, from ARGV[2 + 7*(i-1)]:
    reservation id to use if one is created · storefront name · Idempotency-Key ·
    user id (no '|') · product id · units (int, 1..10^12) ·
    gate: '' (no admission token, no buyer signals) or four values joined by '\n':
      admission (''  none, '-' a token that did not verify, else its expiry in ms) ·
      identity · device · network (the /24 or /48 of the buyer's ip), each '' when not sent
    The gate is read only for a campaign whose meta sets 'queue', 'elig', 'icap', 'dcap' or
    'ncap' (engine/lua/load.lua): a campaign without them pays nothing per request for it.

  Hash fields, the record and the event fields: engine/keys.py (tests/core/test_layout.py).

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 new | 1 replay)}   the record is msgpack:
      {state, product, user, units, amount, expires_ms, created_ms, storefront, key, ref, confirmed_ms}
      and, under a campaign with buyer caps, three more: {..., identity, device, network}, each
      the signal a cap counted ('' when the campaign caps no such dimension); cancel and expire
      return the units to exactly those (records of 11 values count none)
      (a replayed hold past its deadline is shown 'expired'; the sweeper writes it)
    {code < 0, detail, '', 0}   codes in engine/status.py; detail: remaining units
      (INSUFFICIENT_STOCK), units still allowed (USER_CAP_EXCEEDED), ms to wait (RATE_LIMITED),
      the product id (PRODUCT_NOT_FOUND, SOLD_OUT), the stored reservation id
      (RESERVATION_NOT_FOUND: the key points at a record that is gone; DAMAGED_RECORD: at a
      record cmsgpack cannot read or of the wrong shape: that request alone is refused),
      'dimension|units still allowed' (BUYER_CAP_EXCEEDED: identity, device or network),
      the missing field (BUYER_SIGNAL_MISSING: 'buyer.identity', 'buyer.device', 'buyer.ip');
      ADMISSION_REQUIRED, ADMISSION_INVALID, ADMISSION_EXPIRED, NOT_REGISTERED: detail ''
  Malformed ARGV fails the whole batch with an error reply, before any read or write; so does a
  campaign whose stored price or total is out of the bounds engine/campaign.py enforces (price
  1..10^9, total 1..10^12, total × price <= 2^53), before any write. Within them, a request whose
  units × price would pass 2^53 asks for more than the tranche: INSUFFICIENT_STOCK, like any other.
  The users hash gets each new hold's units per user (t|UID), per product (t|UID|PID) and per
  storefront (t|UID|PID|SF): caps count the first two, a storefront sees only the last.

  Order of checks: the buyer signals a cap needs (BUYER_SIGNAL_MISSING), idempotency (a replay
  returns the first reservation, as it is now; rejections are not remembered, so a retry after
  one is judged afresh; a replay must carry the same product, user, units and capped signals),
  product, rate limit (GCRA; an attempt counts even if rejected later; replays do not count),
  window and state, admission token (queue mode; its expiry against TIME), registration
  (eligibility 'registered'), user caps, buyer caps, stock.
  The buyers hash counts units held + confirmed per identity (i|ID), device (d|DEV) and network
  (n|NET), for the dimensions the campaign caps.
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
-- @include chunked
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
local NOT_REGISTERED = -22
local BUYER_CAP_EXCEEDED = -23
local ADMISSION_REQUIRED = -26
local ADMISSION_INVALID = -27
local ADMISSION_EXPIRED = -28
local BUYER_SIGNAL_MISSING = -29
local REJECTION_NAME = {
  [NOT_OPEN] = 'NOT_OPEN', [CLOSED] = 'CLOSED', [PAUSED] = 'PAUSED', [SOLD_OUT] = 'SOLD_OUT',
  [INSUFFICIENT_STOCK] = 'INSUFFICIENT_STOCK', [USER_CAP_EXCEEDED] = 'USER_CAP_EXCEEDED',
  [IDEMPOTENCY_KEY_REUSED] = 'IDEMPOTENCY_KEY_REUSED', [RATE_LIMITED] = 'RATE_LIMITED',
  [NOT_REGISTERED] = 'NOT_REGISTERED', [BUYER_CAP_EXCEEDED] = 'BUYER_CAP_EXCEEDED',
  [ADMISSION_REQUIRED] = 'ADMISSION_REQUIRED', [ADMISSION_INVALID] = 'ADMISSION_INVALID',
  [ADMISSION_EXPIRED] = 'ADMISSION_EXPIRED',
}
local STRIDE = 7
local RING = 120  -- seconds kept in the rate ring
local MAX_UNITS = 1e12             -- engine/campaign.py MAX_UNITS
local MAX_PRICE = 1e9              -- engine/campaign.py MAX_PRICE
local MAX_AMOUNT = 9007199254740992  -- engine/campaign.py MAX_AMOUNT (2^53): money stays exact
-- A new record, as cmsgpack.pack({'held', pid, uid, units, amount, exp, now, sf, key, '', 0})
-- writes it: the header of an 11-element array, then each value's msgpack (a string's is a
-- header, by its length, then its bytes), put together from pieces made once per batch.
local RECORD_HEAD = '\155\164held'  -- fixarray of 11, fixstr of 4: 'held'
local RECORD_TAIL = '\160\0'        -- fixstr of 0: '', positive fixint: 0
local RECORD_HEAD_BUYER = '\158\164held'  -- fixarray of 14: the record with its buyer signals
local E_UNITS = 'ERR reserve: units must be an integer in 1..10^12'
local E_IDS = 'ERR reserve: empty reservation id, or a user id with |'

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR reserve: ARGV must be n then 7 values per request')
end

-- Check every request, and name the fields the batch reads: Idempotency-Keys, user ids.
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

-- A number as Redis would write it ('%.17g'), made cheaply when it is a positive integer.
local function text(x)
  if x > 0 and x < 9007199254740992 and x == floor(x) then return fmt('%d', x) end
  return x
end

local out, no = {}, 0
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local m = rcall('HMGET', KEYS[1], 'opens', 'closes', 'hold', 'price', 'total', 'cap', 'flag',
  'rl_rate', 'rl_burst', 'queue', 'elig', 'icap', 'dcap', 'ncap')
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
-- v1.1 (engine/lua/load.lua): queue mode, pre-registration, buyer caps; gated: any of them
local queued, registered = m[10] == '1', m[11] == 'registered'
local icap, dcap, ncap = tonumber(m[12]), tonumber(m[13]), tonumber(m[14])
local bcaps = icap or dcap or ncap
local gated = queued or registered or bcaps
local gates = nil     -- request i -> {admission, identity, device, network} (gated campaigns)
local stored_reg = nil  -- request i -> its user's registration, or false ('registered')
local buyers = nil    -- buyers hash field -> units taken (held + confirmed) (buyer caps)
local buyers_changed = {}  -- buyers hash field -> true once a reservation adds to it
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

if gated then
  gates = {}
  local regf, bf, nbf = {}, {}, 0
  for i = 1, n do
    local b = 1 + STRIDE * (i - 1)
    local g = ARGV[b + 7]
    local a, id, dev, net = '', '', '', ''
    if g ~= '' then
      local p1 = find(g, '\n', 1, true)
      local p2 = p1 and find(g, '\n', p1 + 1, true)
      local p3 = p2 and find(g, '\n', p2 + 1, true)
      if not p3 then return redis.error_reply('ERR reserve: a gate is four values joined by newlines') end
      a, id = string.sub(g, 1, p1 - 1), string.sub(g, p1 + 1, p2 - 1)
      dev, net = string.sub(g, p2 + 1, p3 - 1), string.sub(g, p3 + 1)
    end
    -- only the signals the campaign caps are counted, kept in the record and compared on replay
    if not icap then id = '' end
    if not dcap then dev = '' end
    if not ncap then net = '' end
    gates[i] = {a, id, dev, net}
    regf[i] = 'u|' .. uids[i]
    if id ~= '' then nbf = nbf + 1; bf[nbf] = 'i|' .. id end
    if dev ~= '' then nbf = nbf + 1; bf[nbf] = 'd|' .. dev end
    if net ~= '' then nbf = nbf + 1; bf[nbf] = 'n|' .. net end
  end
  if registered then stored_reg = hmget(KEYS[10], regf) end
  if bcaps then
    buyers = {}
    if nbf > 0 then
      local got = hmget(KEYS[11], bf)
      for j = 1, nbf do buyers[bf[j]] = tonumber(got[j]) or 0 end
    end
  end
end

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
local function replay(prior, pid, uid, units, g)
  local packed = new_res[prior] or rcall('HGET', KEYS[4], prior)
  if not packed then return reject(RESERVATION_NOT_FOUND, prior) end
  local ok, r = pcall(cmsgpack.unpack, packed)
  if not ok or type(r) ~= 'table' or type(r[6]) ~= 'number' then
    return reply(DAMAGED_RECORD, prior, '', 0)
  end
  if r[2] ~= pid or r[3] ~= uid or r[4] ~= units then return reject(IDEMPOTENCY_KEY_REUSED, '') end
  -- the capped signals are part of the request: another identity, device or network is another
  -- request (a record of 11 values, from before the caps counted, compares as none)
  if g and (g[2] ~= (r[12] or '') or g[3] ~= (r[13] or '') or g[4] ~= (r[14] or '')) then
    return reject(IDEMPOTENCY_KEY_REUSED, '')
  end
  if r[1] == 'held' and now >= r[6] then
    r[1] = 'expired'
    packed = pack(r)
  end
  reply(OK, prior, packed, 1)
end

-- The v1.1 checks, for gated campaigns only (kept out of judge: Lua allows a function 60 upvalues).
-- The field a buyer cap needs that request gate g lacks, or nil.
local function signal_missing(g)
  if icap and g[2] == '' then return 'buyer.identity' end
  if dcap and g[3] == '' then return 'buyer.device' end
  if ncap and g[4] == '' then return 'buyer.ip' end
  return nil
end

-- The admission and registration checks of request i: a rejection code, or nil.
local function admit(i, g)
  if queued then
    local a = g[1]
    if a == '' then return ADMISSION_REQUIRED end
    local until_ms = tonumber(a)
    if not until_ms then return ADMISSION_INVALID end
    if now >= until_ms then return ADMISSION_EXPIRED end
  end
  if registered and not stored_reg[i] then return NOT_REGISTERED end
  return nil
end

-- The first buyer cap `units` would breach, as BUYER_CAP_EXCEEDED's detail, or nil.
local function buyer_breach(g, units)
  local left
  if icap then
    left = icap - buyers['i|' .. g[2]]
    if units > left then return 'identity|' .. math.max(left, 0) end
  end
  if dcap then
    left = dcap - buyers['d|' .. g[3]]
    if units > left then return 'device|' .. math.max(left, 0) end
  end
  if ncap then
    left = ncap - buyers['n|' .. g[4]]
    if units > left then return 'network|' .. math.max(left, 0) end
  end
  return nil
end

-- A new hold's buyer signals: counted, and the msgpack its record ends with.
local function buyer_take(g, units)
  local f
  if icap then f = 'i|' .. g[2]; buyers[f] = buyers[f] + units; buyers_changed[f] = true end
  if dcap then f = 'd|' .. g[3]; buyers[f] = buyers[f] + units; buyers_changed[f] = true end
  if ncap then f = 'n|' .. g[4]; buyers[f] = buyers[f] + units; buyers_changed[f] = true end
  return pack(g[2], g[3], g[4])
end

local function judge(i, b, rid, sf, key, uid, pid, units)
  local g = gated and gates[i]
  if g and bcaps then
    local field = signal_missing(g)
    if field then return reply(BUYER_SIGNAL_MISSING, field, '', 0) end
  end
  local ikey = ikeys[i]
  local prior = new_idem[ikey] or stored_idem[i]
  if prior then return replay(prior, pid, uid, units, g) end
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
  if g then
    local code = admit(i, g)
    if code then return reject(code, '') end
  end
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
  local capped = g and bcaps
  if capped then
    local breach = buyer_breach(g, units)
    if breach then return reject(BUYER_CAP_EXCEEDED, breach) end
  end
  local remaining = total - csold - cheld
  local premaining = p.total - p.sold - p.held
  if premaining < remaining then remaining = premaining end
  if remaining <= 0 then return reject(SOLD_OUT, pid) end
  if units > remaining or units * price > MAX_AMOUNT then return reject(INSUFFICIENT_STOCK, remaining) end
  if not vu then vu, vup = user_taken(i, fu, fup) end
  local pu = packed_units[units]
  if not pu then pu = pack(units, units * price, exp, now); packed_units[units] = pu end
  local packed = (capped and RECORD_HEAD_BUYER or RECORD_HEAD) .. (str_header[#pid] or packed_header(pid)) .. pid
    .. (str_header[#uid] or packed_header(uid)) .. uid .. pu
    .. (str_header[#sf] or packed_header(sf)) .. sf .. (str_header[#key] or packed_header(key)) .. key
    .. RECORD_TAIL
  -- the signals the caps counted go into the record, so that cancel and expire return them once
  if capped then packed = packed .. buyer_take(g, units) end
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
  if bcaps then
    local bargs, k = {}, 0
    for f in pairs(buyers_changed) do bargs[k + 1] = f; bargs[k + 2] = text(buyers[f]); k = k + 2 end
    call_chunked('HSET', KEYS[11], bargs)
  end
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
    if bcaps then  -- the capped signals, for recover and reconcile (engine/events.py)
      local g = gates[(b - 1) / STRIDE + 1]
      rcall('XADD', KEYS[7], '*', 'e', 'reserved', 'rid', ARGV[b + 1], 'pid', ARGV[b + 5],
        'uid', ARGV[b + 4], 'units', ut, 'amount', amount_text[units], 'at', now_text,
        'sf', ARGV[b + 2], 'exp', exp_text, 'key', ARGV[b + 3], 'bi', g[2], 'bd', g[3], 'bn', g[4])
    else
      rcall('XADD', KEYS[7], '*', 'e', 'reserved', 'rid', ARGV[b + 1], 'pid', ARGV[b + 5],
        'uid', ARGV[b + 4], 'units', ut, 'amount', amount_text[units], 'at', now_text,
        'sf', ARGV[b + 2], 'exp', exp_text, 'key', ARGV[b + 3])
    end
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
