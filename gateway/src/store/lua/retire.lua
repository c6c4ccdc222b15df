-- retire: a release that failed (Redis unreachable) and is retried later. By then Redis may have
-- been rolled back (a snapshot, an AOF, a promoted lagging replica) to a state in which this
-- socket's epoch looks current, while a newer socket of the device lives on another replica that
-- has not re-asserted its lease yet: deciding here would report that live screen offline. So the
-- retry decides nothing: it leaves the lease to the sweep, due now. The sweep announces the
-- offline unless a refresh re-asserts a newer epoch first; after a rollback or a restart the
-- sweep's grace gives every live replica that time (sweep.lua).
-- Returns 0 (nothing: a newer epoch owns the device, or this epoch's lease is already gone), 2
-- (the offline was announced since this socket came online: see release.lua) or 3 (left to the
-- sweep, at this socket's epoch).
-- KEYS: 1 device:epoch:{id} 2 device:lease:{id} 3 presence:deadlines 4 device:status:{id}
-- ARGV: 1 id 2 epoch 3 org 4 replica
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur and cur > mine then
  return 0
end
local raw = redis.call('GET', KEYS[2])
local owner = nil
if raw then
  local ok, l = pcall(cjson.decode, raw)
  if ok and type(l) == 'table' then
    owner = tonumber(l.epoch)
  end
end
if owner and owner > mine then
  return 0
end
if not raw then
  if cur == mine then
    return 0
  end
  if offline_announced_since(KEYS[4], mine) then
    redis.call('SET', KEYS[1], ARGV[2])
    return 2
  end
end
if not cur or cur < mine then
  redis.call('SET', KEYS[1], ARGV[2])
end
if owner ~= mine then
  -- Missing (Redis lost it) or an older ghost: the lease the sweep expires is this socket's, so
  -- its offline carries this epoch (which the database's epoch guard accepts).
  redis.call('SET', KEYS[2], cjson.encode({epoch = ARGV[2], replica = ARGV[4], sid = '', org = ARGV[3]}))
end
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
return 3
