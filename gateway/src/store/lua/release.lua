-- release: on disconnect, drop the lease unless a strictly newer epoch owns the device.
-- Returns 1 when this was the offline transition, 0 when a newer socket owns the device or the
-- sweep already expired the lease, 2 when the sweep expired an older state's lease after this
-- socket came online (see below).
-- No epoch at all, or an OLDER one, means Redis lost its state or came back with older data (a
-- restart without persistence, from a snapshot or AOF, a promoted lagging replica) and this
-- socket was the device's latest: its release is the offline transition, at this socket's
-- epoch (so the database's epoch guard accepts it), and any ghost lease of the older state goes.
-- The offline notice is scheduled in the same step, so a reconnect (whose acquire cancels it)
-- can never slip in between the transition and the scheduling.
-- KEYS: 1 device:epoch:{id} 2 device:lease:{id} 3 presence:deadlines 4 device:status:{id}
--       5 notify:offline:{id} 6 notify:due
-- ARGV: 1 id 2 epoch 3 org 4 offline_status_ttl_s 5 notify_delay_ms
local mine = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur and cur > mine then
  return 0
end
local existed = redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if cur == mine and existed == 0 then
  return 0
end
if cur ~= mine then
  redis.call('SET', KEYS[1], ARGV[2])
end
-- Rolled back, and the older lease is already gone: if a sweep expired it after this socket came
-- online (the epoch is Redis TIME in µs at the acquire), the offline was announced then, and its
-- notice scheduled. Announcing it again would show the screen leaving twice; the caller only
-- brings the database to this epoch. An offline older than this socket (from the snapshot
-- itself) was followed by this socket's online: this release is the transition.
if existed == 0 then
  if offline_announced_since(KEYS[4], mine) then
    return 2
  end
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[4], cjson.encode({status = 'offline', lastHeartbeat = now_ms, socketId = cjson.null, organizationId = ARGV[3]}), 'EX', ARGV[4])
local due = now_ms + tonumber(ARGV[5])
redis.call('SET', KEYS[5], cjson.encode({deviceId = ARGV[1], deviceName = ARGV[1], organizationId = ARGV[3], scheduledFor = due, disconnectedAt = now_ms}), 'PX', tonumber(ARGV[5]) + 300000)
redis.call('ZADD', KEYS[6], due, ARGV[1])
return 1
