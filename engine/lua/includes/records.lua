-- Included by confirm.lua, cancel.lua and expire.lua (engine/core/scripts.py splices it in):
-- reading a batch's reservation records before anything is written.
--
-- A record is the msgpack of
--   {state, product, user, units, amount, expires_ms, created_ms, storefront, key, ref, confirmed_ms}
-- and, under buyer caps, {..., identity, device, network} (layout: engine/keys.py RECORD; the
-- field and event names these scripts write out: engine/keys.py, checked by tests/core/test_layout.py).
-- One that cmsgpack cannot read, or whose fields have the wrong type or shape, is damaged: it is
-- named (DAMAGED_RECORD), never raised, so it cannot fail the batch.
local fmt = string.format
local MAX_UNITS = 1e12  -- engine/campaign.py MAX_UNITS
local MAX_EXACT = 9007199254740992  -- 2^53: every amount, count and ms stays exact in a double
local STATES = {held = true, confirmed = true, cancelled = true, expired = true}

-- Redis TIME in ms: the one clock every API host shares.
local function redis_now()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function whole(x, low, high)
  return type(x) == 'number' and x == math.floor(x) and x >= low and x <= high
end

local function well_formed(r)
  return STATES[r[1]] and type(r[2]) == 'string' and r[2] ~= '' and type(r[3]) == 'string'
    and whole(r[4], 1, MAX_UNITS) and whole(r[5], 0, MAX_EXACT) and whole(r[6], 0, MAX_EXACT)
    and whole(r[7], 0, MAX_EXACT) and type(r[8]) == 'string' and type(r[9]) == 'string'
    and type(r[10]) == 'string' and whole(r[11], 0, MAX_EXACT)
    and (r[12] == nil or (type(r[12]) == 'string' and type(r[13]) == 'string'
      and type(r[14]) == 'string' and r[15] == nil))
end

-- The entry of one stored value: false when there is none; {r = record, packed = its msgpack};
-- or, for a damaged record, {damaged = 'unreadable' | 'malformed', owner = its storefront if
-- that much can be read}.
local function entry_of(packed)
  if not packed then return false end
  local ok, r = pcall(cmsgpack.unpack, packed)
  if not ok or type(r) ~= 'table' then return {damaged = 'unreadable'} end
  if not well_formed(r) then
    return {damaged = 'malformed', owner = type(r[8]) == 'string' and r[8] or nil}
  end
  return {r = r, packed = packed}
end

-- The entries of the records of `rids` (a list; ids may repeat), by id, read in one HMGET;
-- and, by id, whether each damaged one was set aside before (it is in the damaged hash KEYS[6]).
local function read_entries(rids)
  local entries, damaged, known = {}, {}, {}
  if #rids == 0 then return entries, known end
  local stored = hmget(KEYS[3], rids)
  for i = 1, #rids do
    local rid = rids[i]
    if entries[rid] == nil then
      local e = entry_of(stored[i])
      entries[rid] = e
      if e and e.damaged then damaged[#damaged + 1] = rid end
    end
  end
  if #damaged > 0 then
    local got = hmget(KEYS[6], damaged)
    for i = 1, #damaged do known[damaged[i]] = got[i] and true or false end
  end
  return entries, known
end
