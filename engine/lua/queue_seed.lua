--[[
  Commit the waiting room's seed, if none is committed yet (at campaign load, or the first read
  that finds none). Idempotent: the first committed seed stays for the campaign's life.

  KEYS[1] admission hash
  ARGV[1] seed candidate (hex)   ARGV[2] its SHA-256 (hex)

  Returns {OK, seed_sha256} (the committed seed's hash, whichever call committed it).
]]
local rcall = redis.call
local OK = 0
-- @include admission_seed

commit_seed(KEYS[1], ARGV[1], ARGV[2])
return {OK, rcall('HGET', KEYS[1], 'seed_sha')}
