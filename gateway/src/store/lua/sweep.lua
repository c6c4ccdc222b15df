-- sweep: remove leases whose deadline passed (their replica died or lost Redis). Atomic, so each
-- expired lease is removed by exactly one replica. Returns a flat list id, epoch, org, ...
-- The offline notice is scheduled in the same step (see release.lua).
-- KEYS: 1 presence:deadlines 2 notify:due   ARGV: 1 limit 2 offline_status_ttl_s 3 notify_delay_ms
-- Lease and status keys are derived from the id (single-instance Redis; see ARCHITECTURE.md).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('GET', 'device:lease:' .. id)
  if raw then
    redis.call('DEL', 'device:lease:' .. id)
    local ok, l = pcall(cjson.decode, raw)
    if ok and type(l) == 'table' then
      redis.call('SET', 'device:status:' .. id, cjson.encode({status = 'offline', lastHeartbeat = now_ms, socketId = cjson.null, organizationId = l.org}), 'EX', ARGV[2])
      local due = now_ms + tonumber(ARGV[3])
      redis.call('SET', 'notify:offline:' .. id, cjson.encode({deviceId = id, deviceName = id, organizationId = l.org, scheduledFor = due, disconnectedAt = now_ms}), 'PX', tonumber(ARGV[3]) + 300000)
      redis.call('ZADD', KEYS[2], due, id)
      table.insert(out, id)
      table.insert(out, tostring(l.epoch))
      table.insert(out, tostring(l.org))
    end
  end
end
return out
