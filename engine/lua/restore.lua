--[[
  Apply a recovery plan (`flashsale recover`), in bounded steps that each judge everything
  before their first write. The plan was built, page by page, into complete staged copies of the
  campaign's counters, users, reservation records, idempotency and buyers hashes; the first step (swap)
  puts them in place and drops the holds, if the campaign has not moved since the plan was read
  (every change to it appends to its stream, so the stream's last-generated-id names its state).
  Holds that were never confirmed are dropped: each gets an 'expired' event, so the ledger's
  history agrees; a plan with many sends them over several calls (swap 0), each checking that
  the stream is where the call before left it. The stream's ids are moved past every id the
  ledger holds, so a new entry can never reuse the id of a lost one.

  The swap's writes are UNLINKs (a large old value is freed in a background thread) and RENAMEs
  onto the unlinked names: none costs in proportion to the sale, so no call blocks on its size.

  KEYS[1] counters hash      KEYS[2] users hash        KEYS[3] reservations hash
  KEYS[4] holds zset         KEYS[5] events stream     KEYS[6] ledger hash
  KEYS[7] idempotency hash   KEYS[8] buyers hash (units per capped buyer signal)
  KEYS[9] staged counters    KEYS[10] staged users     KEYS[11] staged reservation records
  KEYS[12] staged idempotency hash                     KEYS[13] staged buyers hash
  (staged keys absent: the campaign has none of those)
  ARGV[1] the stream's last-generated-id the plan (or the step before) left ('0-0': no stream)
  ARGV[2] the highest entry id the ledger holds for the campaign ('0-0': none)
  ARGV[3] orders the ledger holds (count), published as persisted_orders if higher
  ARGV[4] the ledger writers' consumer group (made, from id 0, if missing)
  ARGV[5] 1: swap the staged keys in and drop the holds; 0: only append the events below
  ARGV[6] n, dropped holds whose 'expired' event this call appends (0..1000); then 5 values per
          hold: reservation id, product, user, units (int > 0), amount (minor units, int >= 0)

  Returns {0, events appended, the stream's last-generated-id now} (pass it as ARGV[1] of the
  next step), or {1, current last id} when the campaign moved: nothing was written, plan again.
  Bad arguments or keys of the wrong type are an error reply, also before any write.
]]
local rcall = redis.call
local OK = 0
local STALE = 1
local MAX_HOLDS = 1000

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

local function count(v, min)
  local x = tonumber(v)
  return x ~= nil and x == math.floor(x) and x >= min
end

local function fail(why) return redis.error_reply('ERR restore: ' .. why) end

-- judge: every argument and every key, before the first write
local n, swap = tonumber(ARGV[6]), ARGV[5]
if not parse_id(ARGV[1] or '') or not parse_id(ARGV[2] or '') or not count(ARGV[3], 0) then
  return fail('ARGV[1..3] must be last id, ledger id, orders')
end
if (swap ~= '0' and swap ~= '1') or not count(n, 0) or n > MAX_HOLDS or #ARGV ~= 6 + 5 * n then
  return fail('ARGV must be last id, ledger id, orders, group, swap (0|1), n (0..1000), 5 per hold')
end
for i = 0, n - 1 do
  local b = 7 + 5 * i
  if ARGV[b] == '' or not count(ARGV[b + 3], 1) or not count(ARGV[b + 4], 0) then
    return fail('hold ' .. (i + 1) .. ': reservation id, product, user, units > 0, amount >= 0')
  end
end
local want = {hash = {1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13}, zset = {4}, stream = {5}}
for kind, idx in pairs(want) do
  for _, i in ipairs(idx) do
    local t = rcall('TYPE', KEYS[i])['ok']
    if t ~= kind and t ~= 'none' then return fail('KEYS[' .. i .. '] is a ' .. t .. ', not a ' .. kind) end
  end
end
local current = last_id()
if current ~= ARGV[1] then return {STALE, current} end

-- write
if swap == '1' then
  for i, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[7], KEYS[8]}) do
    local staged = ({KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]})[i]
    rcall('UNLINK', key)
    if rcall('EXISTS', staged) == 1 then rcall('RENAME', staged, key) end
  end
  rcall('UNLINK', KEYS[4])
end
local made = redis.pcall('XGROUP', 'CREATE', KEYS[5], ARGV[4], '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)  -- only a group name Redis refuses: nothing else was written
end
if id_greater(ARGV[2], current) then rcall('XSETID', KEYS[5], ARGV[2]) end

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 0, n - 1 do
  local b = 7 + 5 * i
  rcall('XADD', KEYS[5], '*', 'e', 'expired', 'rid', ARGV[b], 'pid', ARGV[b + 1], 'uid', ARGV[b + 2],
    'units', ARGV[b + 3], 'amount', ARGV[b + 4], 'at', now)
end

local old = tonumber(rcall('HGET', KEYS[6], 'persisted_orders')) or -1
if tonumber(ARGV[3]) > old then rcall('HSET', KEYS[6], 'persisted_orders', ARGV[3]) end
return {OK, n, last_id()}
