-- sweep: remove leases whose deadline passed (their replica died or lost Redis). Atomic, so each
-- expired lease is removed by exactly one replica. Returns the tick it wrote, then a flat list
-- id, epoch, org, ...
-- The offline notice is scheduled in the same step (see release.lua).
-- Grace (see ARCHITECTURE.md, "stalls and rollbacks"): every sweep stamps presence:sweep-tick
-- with Redis TIME. When the previous tick is missing (Redis restarted or rolled back past the
-- first tick), older than the tick this replica last wrote (rolled back: a snapshot, an AOF, a
-- promoted lagging replica), or older than stall_ms (Redis stalled or unreachable for everyone),
-- the deadlines in Redis say nothing about the live sockets, so nothing is swept until
-- presence:grace-until: long enough for every live replica to re-assert its leases first.
-- KEYS: 1 presence:deadlines 2 notify:due 3 presence:sweep-tick 4 presence:grace-until
-- ARGV: 1 limit 2 offline_status_ttl_s 3 notify_delay_ms 4 last tick this replica wrote (0: none)
--       5 stall_ms 6 grace_ms (0: no grace) 7 key prefix of this shard ('' on one primary,
--       the shard's hash tag on a cluster: the derived keys then share the slot of KEYS)
-- Lease, status and notice keys are derived from the id and the prefix (store/keys.rs).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = tonumber(redis.call('GET', KEYS[3]) or '')
local seen = tonumber(ARGV[4]) or 0
local grace_ms = tonumber(ARGV[6]) or 0
redis.call('SET', KEYS[3], string.format('%.0f', now_ms))
if grace_ms > 0 and (not prev or prev < seen or now_ms - prev > tonumber(ARGV[5])) then
  redis.call('SET', KEYS[4], string.format('%.0f', now_ms + grace_ms), 'PX', grace_ms)
end
local out = {string.format('%.0f', now_ms)}
local grace_until = tonumber(redis.call('GET', KEYS[4]) or '')
if grace_until and grace_until > now_ms then
  return out
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('GET', ARGV[7] .. 'device:lease:' .. id)
  if raw then
    redis.call('DEL', ARGV[7] .. 'device:lease:' .. id)
    local ok, l = pcall(cjson.decode, raw)
    if ok and type(l) == 'table' then
      redis.call('SET', ARGV[7] .. 'device:status:' .. id, cjson.encode({status = 'offline', lastHeartbeat = now_ms, socketId = cjson.null, organizationId = l.org}), 'EX', ARGV[2])
      local due = now_ms + tonumber(ARGV[3])
      redis.call('SET', ARGV[7] .. 'notify:offline:' .. id, cjson.encode({deviceId = id, deviceName = id, organizationId = l.org, scheduledFor = due, disconnectedAt = now_ms}), 'PX', tonumber(ARGV[3]) + 300000)
      redis.call('ZADD', KEYS[2], due, id)
      table.insert(out, id)
      table.insert(out, tostring(l.epoch))
      table.insert(out, tostring(l.org))
    end
  end
end
return out
