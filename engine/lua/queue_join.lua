--[[
  Take a ticket in a campaign's waiting room, or return the one this user (or this identity,
  under an identity cap) already has.

  KEYS[1] campaign meta hash   KEYS[2] admission hash   KEYS[3] tickets hash   KEYS[4] queue zset
  KEYS[5] queue users hash     KEYS[6] registrations hash
  ARGV[1] definition fingerprint (hex SHA-1 of the stored definition, as the caller read it)
  ARGV[2] queue_opens_at (ms)   ARGV[3] opens_at (ms)
  ARGV[4] eligibility registered (1/0)   ARGV[5] identity cap (1/0)
  ARGV[6] new ticket id   ARGV[7] user id   ARGV[8] identity ('' when none)   ARGV[9] storefront
  ARGV[10] seed candidate (hex)   ARGV[11] its SHA-256 (hex)

  The place (the queue's score): a ticket taken before opens_at (Redis TIME) scores its draw,
  the first 13 hex digits (52 bits) of SHA-1(seed .. ':' .. user id); one taken at or after it
  scores 2^52 + its arrival sequence (admission `seq`), behind every draw. So the order of the
  pre-queue is fixed by each ticket's own draw, and nothing ever reorders the queue: a
  ticket's position (ZRANK) never changes once opens_at has passed.
  Ticket record: `USER|STOREFRONT|joined ms|score`.

  Returns {OK, ticket, 1} a new ticket, {OK, ticket, 0} the existing one; or {code, ''}:
  CAMPAIGN_NOT_FOUND, DEFINITION_CHANGED (re-read and retry), QUEUE_NOT_OPEN (before
  queue_opens_at), CLOSED (closed, or past its window), NOT_REGISTERED, QUEUED_ELSEWHERE (the
  existing ticket is another storefront's).
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local CLOSED = -5
local QUEUE_NOT_OPEN = -21
local NOT_REGISTERED = -22
local QUEUED_ELSEWHERE = -24
local DEFINITION_CHANGED = -25
local LATE = 4503599627370496 -- 2^52: every draw is below it
-- @include admission_seed

local meta = rcall('HMGET', KEYS[1], 'def', 'closes', 'flag')
if not meta[1] then return {CAMPAIGN_NOT_FOUND, ''} end
if redis.sha1hex(meta[1]) ~= ARGV[1] then return {DEFINITION_CHANGED, ''} end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ARGV[2]) then return {QUEUE_NOT_OPEN, ''} end
if meta[3] == 'closed' or now >= tonumber(meta[2]) then return {CLOSED, ''} end

local user, identity, storefront = ARGV[7], ARGV[8], ARGV[9]
local by_identity = ARGV[5] == '1' and identity ~= ''
local existing = rcall('HGET', KEYS[5], 'u|' .. user)
if not existing and by_identity then existing = rcall('HGET', KEYS[5], 'i|' .. identity) end
if existing then
  local record = rcall('HGET', KEYS[3], existing)
  local owner = string.match(record, '^[^|]*|([^|]*)|')
  if owner ~= storefront then return {QUEUED_ELSEWHERE, ''} end
  return {OK, existing, 0}
end
if ARGV[4] == '1' and rcall('HEXISTS', KEYS[6], 'u|' .. user) == 0 then return {NOT_REGISTERED, ''} end

local seed = commit_seed(KEYS[2], ARGV[10], ARGV[11])
local score
if now < tonumber(ARGV[3]) then
  score = tonumber(string.sub(redis.sha1hex(seed .. ':' .. user), 1, 13), 16)
else
  score = LATE + rcall('HINCRBY', KEYS[2], 'seq', 1)
end
local ticket = ARGV[6]
rcall('HSET', KEYS[3], ticket, user .. '|' .. storefront .. '|' .. now .. '|' .. string.format('%.0f', score))
rcall('ZADD', KEYS[4], score, ticket)
rcall('HSET', KEYS[5], 'u|' .. user, ticket)
if by_identity then rcall('HSET', KEYS[5], 'i|' .. identity, ticket) end
return {OK, ticket, 1}
