--[[
  The kill switch: pause, resume or close a campaign; takes effect for the next request.

  KEYS[1] meta hash
  ARGV[1] action: 'pause' | 'resume' | 'close' | 'recovering' | 'recovered'
    ('recovering' stops all reserves while `flashsale recover` rebuilds the campaign;
     'recovered' puts back the flag the campaign had before, and is a no-op otherwise)

  Returns {0, flag} with the new admin flag ('active', 'paused', 'closed', 'recovering'),
  or {CAMPAIGN_NOT_FOUND, ''}, or {INVALID_STATE, flag} (a closed campaign stays closed; a
  recovering one is neither paused nor resumed). An unknown action is an error reply.
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local INVALID_STATE = -11
local ACTIONS = {pause = true, resume = true, close = true, recovering = true, recovered = true}

local action = ARGV[1]
if not ACTIONS[action] then
  return redis.error_reply('ERR admin: unknown action ' .. tostring(action))
end
local flag = rcall('HGET', KEYS[1], 'flag')
if not flag then return {CAMPAIGN_NOT_FOUND, ''} end
if action == 'close' then
  rcall('HSET', KEYS[1], 'flag', 'closed')
  rcall('HDEL', KEYS[1], 'flag_before_recovery')
  return {OK, 'closed'}
end
if action == 'recovering' then
  if flag ~= 'recovering' then
    rcall('HSET', KEYS[1], 'flag_before_recovery', flag, 'flag', 'recovering')
  end
  return {OK, 'recovering'}
end
if action == 'recovered' then
  if flag ~= 'recovering' then return {OK, flag} end
  local before = rcall('HGET', KEYS[1], 'flag_before_recovery') or 'active'
  rcall('HSET', KEYS[1], 'flag', before)
  rcall('HDEL', KEYS[1], 'flag_before_recovery')
  return {OK, before}
end
if flag == 'closed' or flag == 'recovering' then return {INVALID_STATE, flag} end
local new = (action == 'pause') and 'paused' or 'active'
if new ~= flag then rcall('HSET', KEYS[1], 'flag', new) end
return {OK, new}
