--[[
  The kill switch: pause, resume or close a campaign; takes effect for the next request.

  KEYS[1] meta hash
  ARGV[1] action: 'pause' | 'resume' | 'close' | 'recovering' | 'recovered'
    ('recovering' stops all reserves while `flashsale recover` rebuilds the campaign;
     'recovered' puts back the flag the campaign had before)

  Returns {0, flag} with the new admin flag ('active', 'paused', 'closed', 'recovering'),
  or {CAMPAIGN_NOT_FOUND, ''}, or {INVALID_STATE, flag} (a closed campaign stays closed).
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local INVALID_STATE = -11

local action = ARGV[1]
local flag = rcall('HGET', KEYS[1], 'flag')
if not flag then return {CAMPAIGN_NOT_FOUND, ''} end
local new
if action == 'close' then new = 'closed'
elseif action == 'recovering' then
  if flag ~= 'recovering' then rcall('HSET', KEYS[1], 'flag_before_recovery', flag) end
  new = 'recovering'
elseif action == 'recovered' then
  new = rcall('HGET', KEYS[1], 'flag_before_recovery') or 'active'
elseif flag == 'closed' or flag == 'recovering' then return {INVALID_STATE, flag}
elseif action == 'pause' then new = 'paused'
elseif action == 'resume' then new = 'active'
else return redis.error_reply('ERR admin: unknown action ' .. tostring(action)) end
rcall('HSET', KEYS[1], 'flag', new)
return {OK, new}
