package redis

import "github.com/redis/rueidis"

// appendScript stores one Append atomically: a Lua script runs alone on the
// server, so no other command sees half of it and no other node's Append
// interleaves with it.
//
//	KEYS[1]  the stream
//	KEYS[2]  the idempotency key (absent when the Append has none)
//	ARGV[1]  history_size (0: unbounded)
//	ARGV[2]  history_ttl in milliseconds (0: unbounded)
//	ARGV[3]  how long the idempotency key is remembered, in milliseconds
//	ARGV[4]  the number of events n, then 4 arguments per event:
//	         type, data, user_id ("" for none), job_id ("" for none)
//
// It returns {replayed (0 or 1), "id,id,..."}.
//
// All or nothing: the shebang makes Redis refuse the whole script up front
// when it is out of memory (instead of failing at some XADD halfway), and
// the arguments were validated by the caller, so once the first XADD runs
// every one runs. XSETID, the only command that could object (to a stream
// someone else edited), runs through pcall.
//
// Trimming is exact, not "MAXLEN ~": the ids it removes are what clients
// resuming from an old id are told they missed (Bounds.Pruned), so the
// script records the greatest removed id as the stream's max-deleted-entry-id
// (XSETID MAXDELETEDID; Redis updates that field for XDEL only, not for
// trimming). Finding that id costs reading the entries being removed, which
// in steady state are as many as the Append adds.
var appendScript = rueidis.NewLuaScript(`#!lua
local stream = KEYS[1]
local idem = KEYS[2]
if idem then
  local prev = redis.call('GET', idem)
  if prev then
    return {1, prev}
  end
end
local maxlen = tonumber(ARGV[1])
local maxage = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local ids = {}
local a = 5
for i = 1, n do
  local args = {'XADD', stream, '*', 'type', ARGV[a], 'data', ARGV[a + 1]}
  if ARGV[a + 2] ~= '' then
    args[#args + 1] = 'user_id'
    args[#args + 1] = ARGV[a + 2]
  end
  if ARGV[a + 3] ~= '' then
    args[#args + 1] = 'job_id'
    args[#args + 1] = ARGV[a + 3]
  end
  ids[i] = redis.call(unpack(args))
  a = a + 4
end
if n > 0 then
  local last = ids[n]
  local pruned = nil
  if maxage > 0 then
    -- Events older than history_ttl, measured at this Append's id (the
    -- hub's clock): every id below <ms - ttl>-0.
    local cutoff = tonumber(string.match(last, '^(%d+)-')) - maxage
    if cutoff > 0 then
      local cut = string.format('%.0f', cutoff) .. '-0'
      local old = redis.call('XREVRANGE', stream, '(' .. cut, '-', 'COUNT', 1)
      if #old > 0 then
        pruned = old[1][1]
        redis.call('XTRIM', stream, 'MINID', cut)
      end
    end
  end
  if maxlen > 0 then
    local excess = redis.call('XLEN', stream) - maxlen
    if excess > 0 then
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
      pruned = old[#old][1]
      redis.call('XTRIM', stream, 'MAXLEN', maxlen)
    end
  end
  if pruned then
    redis.pcall('XSETID', stream, last, 'MAXDELETEDID', pruned)
  end
end
local joined = table.concat(ids, ',')
if idem then
  redis.call('SET', idem, joined, 'PX', ARGV[3])
end
return {0, joined}
`)

// boundsScript returns {last-generated-id, max-deleted-entry-id} of the
// stream KEYS[1], or zeros when it does not exist. It runs server-side so
// that Bounds does not transfer the first and last entries XINFO STREAM
// also reports.
var boundsScript = rueidis.NewLuaScriptReadOnly(`#!lua flags=no-writes
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', '0-0'}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, pruned = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    last = info[i + 1]
  elseif info[i] == 'max-deleted-entry-id' then
    pruned = info[i + 1]
  end
end
return {last, pruned}
`)

// Connection counting: a sorted set per user, member <node>:<conn>, score the
// member's expiry in Unix milliseconds of the Redis clock (TIME), so that
// nodes with skewed clocks agree on what has expired.

// acquireScript: KEYS[1] the user's set; ARGV member, limit (<= 0: none),
// ttl ms. Returns 1 when the member is (now) counted, 0 when the user is at
// the limit.
var acquireScript = rueidis.NewLuaScript(`#!lua
local key = KEYS[1]
local member = ARGV[1]
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not redis.call('ZSCORE', key, member) then
  if limit > 0 and redis.call('ZCARD', key) >= limit then
    return 0
  end
end
local exp = now + ttl
redis.call('ZADD', key, string.format('%.0f', exp), member)
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', key, top[2])
return 1
`)

// refreshScript: KEYS[1] the user's set; ARGV ttl ms, then members. It drops
// expired members and (re)adds the given ones with a fresh expiry: a member
// that expired during a Redis outage is counted again once Redis is back.
var refreshScript = rueidis.NewLuaScript(`#!lua
local key = KEYS[1]
local ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local exp = string.format('%.0f', now + ttl)
local args = {'ZADD', key}
for i = 2, #ARGV do
  args[#args + 1] = exp
  args[#args + 1] = ARGV[i]
end
if #args > 2 then
  redis.call(unpack(args))
end
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if #top > 0 then
  redis.call('PEXPIREAT', key, top[2])
end
return 1
`)

// countScript: KEYS[1] the user's set. Returns the members not expired.
var countScript = rueidis.NewLuaScriptReadOnly(`#!lua flags=no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
`)
