-- The admission seed is committed once: the first caller's candidate wins, and its SHA-256 is
-- published from then on. (Lua in Redis has no secure random source: the candidate comes from
-- the caller's `secrets`.)
local function commit_seed(adm_key, seed, seed_sha)
  if rcall('HSETNX', adm_key, 'seed', seed) == 1 then
    rcall('HSET', adm_key, 'seed_sha', seed_sha)
    return seed
  end
  return rcall('HGET', adm_key, 'seed')
end
