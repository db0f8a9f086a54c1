--[[
  Apply a recovery plan (`flashsale recover`): replace a campaign's counters, users and holds
  with the state rebuilt from the ledger, in one atomic step, if the campaign has not moved
  since the plan was made (every change to it appends to its stream, so the stream's
  last-generated-id names its state). Holds that were never confirmed are dropped: each gets an
  'expired' event, so the ledger's history agrees. The stream's ids are moved past every id the
  ledger holds, so a new entry can never reuse the id of a lost one. The idempotency hash gets
  back the fields it lost, so a storefront's retry finds its reservation instead of making one.

  KEYS[1] counters hash      KEYS[2] users hash        KEYS[3] reservations hash
  KEYS[4] holds zset         KEYS[5] events stream     KEYS[6] ledger hash
  KEYS[7] idempotency hash
  KEYS[8] staged counters    KEYS[9] staged users      KEYS[10] staged reservation records
  KEYS[11] staged idempotency fields
  ARGV[1] the stream's last-generated-id the plan was made from ('0-0': no stream)
  ARGV[2] the highest entry id the ledger holds for the campaign ('0-0': none)
  ARGV[3] orders the ledger holds (count), published as persisted_orders if higher
  ARGV[4] the ledger writers' consumer group (made, from id 0, if missing)
  ARGV[5] n, holds to drop; then 5 values per hold: reservation id, product, user, units, amount

  The staged hashes replace counters and users whole; staged records are written over
  their reservations, staged idempotency fields added to the idempotency hash. All four staged
  keys are consumed.

  Returns {0, holds dropped}, or {1, current last id} when the campaign moved: make a new plan.
]]
local rcall = redis.call
local OK = 0
local STALE = 1

local function last_id()
  if rcall('EXISTS', KEYS[5]) == 0 then return '0-0' end
  local info = rcall('XINFO', 'STREAM', KEYS[5])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return '0-0'
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_greater(a, b)
  local ams, aseq = parse_id(a)
  local bms, bseq = parse_id(b)
  return ams > bms or (ams == bms and aseq > bseq)
end

local n = tonumber(ARGV[5])
local persisted = tonumber(ARGV[3])
if not parse_id(ARGV[1]) or not parse_id(ARGV[2]) or not persisted or not n or #ARGV ~= 5 + 5 * n then
  return redis.error_reply('ERR restore: ARGV must be last id, ledger id, orders, group, n, 5 per hold')
end
local current = last_id()
if current ~= ARGV[1] then return {STALE, current} end

for i, key in ipairs({KEYS[1], KEYS[2]}) do
  if rcall('EXISTS', KEYS[7 + i]) == 1 then rcall('RENAME', KEYS[7 + i], key) else rcall('DEL', key) end
end
-- Staged fields merged into a live hash, CHUNK arguments per HSET: unpack() of a longer table
-- overflows Lua's C stack.
local CHUNK = 2000
local function merge_into(key, staged_key)
  local staged = rcall('HGETALL', staged_key)
  for i = 1, #staged, CHUNK do
    rcall('HSET', key, unpack(staged, i, math.min(i + CHUNK - 1, #staged)))
  end
end
merge_into(KEYS[3], KEYS[10])
merge_into(KEYS[7], KEYS[11])
rcall('DEL', KEYS[10], KEYS[11], KEYS[4])

local made = redis.pcall('XGROUP', 'CREATE', KEYS[5], ARGV[4], '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)
end
if id_greater(ARGV[2], current) then rcall('XSETID', KEYS[5], ARGV[2]) end

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 0, n - 1 do
  local b = 6 + 5 * i
  rcall('XADD', KEYS[5], '*', 'e', 'expired', 'rid', ARGV[b], 'pid', ARGV[b + 1], 'uid', ARGV[b + 2],
    'units', ARGV[b + 3], 'amount', ARGV[b + 4], 'at', now)
end

local old = tonumber(rcall('HGET', KEYS[6], 'persisted_orders')) or -1
if persisted > old then rcall('HSET', KEYS[6], 'persisted_orders', persisted) end
return {OK, n}
