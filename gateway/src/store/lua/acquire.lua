-- acquire: a new connection epoch and lease for a device (see ARCHITECTURE.md, lease protocol).
-- KEYS: 1 device:epoch:{id} 2 device:lease:{id} 3 presence:deadlines 4 device:status:{id}
--       5 notify:offline:{id} 6 notify:due 7 notify:fired-offline:{id}
-- ARGV: 1 id 2 replica 3 sid 4 org 5 lease_ttl_ms 6 status_ttl_s
-- The epoch is max(stored + 1, Redis TIME in µs): strictly increasing even when Redis restarted
-- without persistence and lost the stored value.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local epoch = math.max(stored + 1, now_us)
local epoch_s = string.format('%.0f', epoch)
redis.call('SET', KEYS[1], epoch_s)
local prev = redis.call('GET', KEYS[2])
local ttl = tonumber(ARGV[5])
-- `pending` until the socket has entered the namespace (see confirm.lua): until then a room emit
-- would find no socket, so commands are queued instead of sent live.
redis.call('SET', KEYS[2], cjson.encode({epoch = epoch_s, replica = ARGV[2], sid = ARGV[3], org = ARGV[4], pending = true}))
redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[1])
redis.call('SET', KEYS[4], cjson.encode({status = 'online', lastHeartbeat = now_ms, socketId = ARGV[3], organizationId = ARGV[4]}), 'EX', ARGV[6])
local fired = 0
if not prev then
  -- Coming online: cancel a pending offline notice, and report whether one already fired.
  if redis.call('DEL', KEYS[5]) == 1 then
    redis.call('ZREM', KEYS[6], ARGV[1])
  end
  fired = redis.call('DEL', KEYS[7])
end
return {epoch_s, prev or '', fired}
