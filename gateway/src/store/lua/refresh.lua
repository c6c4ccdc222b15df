-- refresh: keep a live socket's lease fresh. Returns 0 stale (a strictly newer epoch owns the
-- device), 1 fresh, 2 restored (Redis lost the epoch, or came back with an older one: a restart
-- from a snapshot or AOF, a promoted lagging replica -- re-asserted as is, silently), 3 revived
-- (the lease had been swept: an online transition; the offline notice that sweep scheduled is
-- cancelled, so a false sweep never writes a notification), 4 revived after that notice had
-- already fired (the return owes a "back online" notice, as after an acquire).
-- Epochs are compared as numbers: µs values (~1.7e15) are exact in a Lua double (< 2^53).
-- KEYS: 1 device:epoch:{id} 2 device:lease:{id} 3 presence:deadlines 4 device:status:{id}
--       5 notify:offline:{id} 6 notify:due 7 notify:fired-offline:{id}
-- ARGV: 1 id 2 epoch 3 replica 4 sid 5 org 6 lease_ttl_ms 7 status_ttl_s 8 pending ('1' before CONNECT)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
local outcome = 1
if cur and cur > mine then
  return 0
elseif not cur or cur < mine then
  -- Whatever lease is stored names an older epoch (a ghost of the rolled-back state): ours wins.
  redis.call('SET', KEYS[1], ARGV[2])
  outcome = 2
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  outcome = 3
  if redis.call('DEL', KEYS[5]) == 1 then
    redis.call('ZREM', KEYS[6], ARGV[1])
  end
  if redis.call('DEL', KEYS[7]) == 1 then
    outcome = 4
  end
end
local ttl = tonumber(ARGV[6])
local lease = {epoch = ARGV[2], replica = ARGV[3], sid = ARGV[4], org = ARGV[5]}
if ARGV[8] == '1' then lease.pending = true end
redis.call('SET', KEYS[2], cjson.encode(lease))
redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[1])
if outcome ~= 1 or redis.call('EXPIRE', KEYS[4], ARGV[7]) == 0 then
  redis.call('SET', KEYS[4], cjson.encode({status = 'online', lastHeartbeat = now_ms, socketId = ARGV[4], organizationId = ARGV[5]}), 'EX', ARGV[7])
end
return outcome
