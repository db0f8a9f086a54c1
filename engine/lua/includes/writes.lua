-- Included by confirm.lua, cancel.lua and expire.lua (after records.lua): the writes of a batch,
-- planned while its requests are judged and made only once every one of them is.
--
-- KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
-- KEYS[5] events stream  KEYS[6] damaged hash  KEYS[7] buyers hash (units per identity, device,
-- network: reserve.lua)
-- Counters and users move by deltas summed per field: flush() reads each field once, then
-- writes it once (one HMGET and one HSET per hash for the whole batch); records are written
-- once per id, the holds zset and the damaged hash once, events in the order they happened.
local plan_counters, plan_users = {}, {}  -- field -> delta
local plan_records, plan_zrem, plan_damaged = {}, {}, {}  -- rid -> packed; rid -> true; rid -> why
local plan_buyers = {}  -- uid -> true: confirmed units were added for this user
local plan_signals, nplan_signals = {}, 0  -- buyers hash field -> delta (buyer caps)
local plan_events, nplan_events = {}, 0  -- each a list of XADD field, value pairs

local function add(t, field, delta) t[field] = (t[field] or 0) + delta end

local function event(fields)
  nplan_events = nplan_events + 1
  plan_events[nplan_events] = fields
end

-- Ends the hold of entry e (state 'held') as `state` ('cancelled' or 'expired'): its units go
-- back to the tranche, to the user's caps and to its storefront's view of the user, exactly
-- once, because the entry leaves 'held' here and later requests of the batch see it so.
local function release_hold(rid, e, state, now)
  local r = e.r
  local pid, uid, units = r[2], r[3], r[4]
  local fup = 't|' .. uid .. '|' .. pid
  add(plan_counters, 'held', -units); add(plan_counters, 'held|' .. pid, -units)
  add(plan_users, 't|' .. uid, -units); add(plan_users, fup, -units)
  add(plan_users, fup .. '|' .. r[8], -units)
  if r[12] then  -- the buyer signals the caps counted for this hold (reserve.lua)
    if r[12] ~= '' then add(plan_signals, 'i|' .. r[12], -units); nplan_signals = nplan_signals + 1 end
    if r[13] ~= '' then add(plan_signals, 'd|' .. r[13], -units); nplan_signals = nplan_signals + 1 end
    if r[14] ~= '' then add(plan_signals, 'n|' .. r[14], -units); nplan_signals = nplan_signals + 1 end
  end
  plan_zrem[rid] = true
  r[1] = state
  e.packed = cmsgpack.pack(r)
  plan_records[rid] = e.packed
  event({'e', state, 'rid', rid, 'pid', pid, 'uid', uid, 'units', units, 'amount', fmt('%d', r[5]),
    'at', now})
end

-- Sets damaged entry e aside: off the holds zset, into the damaged hash, counted once.
-- Returns 1 when it was set aside before (by this batch or an earlier call), else 0.
local function set_aside(rid, e, known)
  plan_zrem[rid] = true
  if known[rid] or plan_damaged[rid] then return 1 end
  plan_damaged[rid] = e.damaged
  add(plan_counters, 'damaged', 1)
  return 0
end

local function fields_of(t)
  local fields, index = {}, {}
  for f in pairs(t) do fields[#fields + 1] = f; index[f] = #fields end
  return fields, index
end

-- Every planned write. It first reads the fields it adds to, so even its own reads come
-- before its first write.
local function flush()
  local uf, ui = fields_of(plan_users)
  local uv = #uf > 0 and hmget(KEYS[2], uf) or {}
  for uid in pairs(plan_buyers) do  -- a user's first confirmed units make a buyer
    if (tonumber(uv[ui['c|' .. uid]]) or 0) == 0 then add(plan_counters, 'buyers', 1) end
  end
  local cf = fields_of(plan_counters)
  local cv = #cf > 0 and hmget(KEYS[1], cf) or {}
  local sf = nplan_signals > 0 and fields_of(plan_signals) or {}
  local sv = #sf > 0 and hmget(KEYS[7], sf) or {}
  local args = {}
  for i = 1, #cf do
    args[2 * i - 1] = cf[i]; args[2 * i] = fmt('%d', (tonumber(cv[i]) or 0) + plan_counters[cf[i]])
  end
  call_chunked('HSET', KEYS[1], args)
  args = {}
  for i = 1, #uf do
    args[2 * i - 1] = uf[i]; args[2 * i] = fmt('%d', (tonumber(uv[i]) or 0) + plan_users[uf[i]])
  end
  call_chunked('HSET', KEYS[2], args)
  args = {}
  for i = 1, #sf do
    args[2 * i - 1] = sf[i]; args[2 * i] = fmt('%d', (tonumber(sv[i]) or 0) + plan_signals[sf[i]])
  end
  call_chunked('HSET', KEYS[7], args)
  args = {}
  for rid, packed in pairs(plan_records) do args[#args + 1] = rid; args[#args + 1] = packed end
  call_chunked('HSET', KEYS[3], args)
  args = {}
  for rid in pairs(plan_zrem) do args[#args + 1] = rid end
  call_chunked('ZREM', KEYS[4], args)
  args = {}
  for rid, why in pairs(plan_damaged) do args[#args + 1] = rid; args[#args + 1] = why end
  call_chunked('HSET', KEYS[6], args)
  for i = 1, nplan_events do rcall('XADD', KEYS[5], '*', unpack(plan_events[i])) end
end
