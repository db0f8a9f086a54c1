-- Included by reserve.lua, confirm.lua, cancel.lua and expire.lua (engine/core/scripts.py splices
-- it in, after the script's `local rcall = redis.call`): commands over many fields or arguments,
-- in calls of at most CHUNK of them.
local CHUNK = 2000  -- arguments per call at most: unpack() of more overflows Lua's C stack

-- HMGET of many fields.
local function hmget(key, fields)
  if #fields <= CHUNK then return rcall('HMGET', key, unpack(fields)) end
  local got = {}
  for i = 1, #fields, CHUNK do
    local part = rcall('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do got[i + j - 1] = part[j] end
  end
  return got
end

-- One command (HSET, HDEL, ZADD, ...) on ``key`` with many arguments.
local function call_chunked(cmd, key, args)
  for i = 1, #args, CHUNK do
    rcall(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end
