-- claim_notices: take due offline notices. Atomic, so exactly one replica claims each notice;
-- a fired marker lets the device's return produce the matching "back online" notice.
-- KEYS: 1 notify:due   ARGV: 1 limit 2 fired_marker_ttl_s 3 key prefix of the shard ('' on one
-- primary, the shard's hash tag on a cluster; see store/keys.rs)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local v = redis.call('GET', ARGV[3] .. 'notify:offline:' .. id)
  if v then
    redis.call('DEL', ARGV[3] .. 'notify:offline:' .. id)
    redis.call('SET', ARGV[3] .. 'notify:fired-offline:' .. id, '1', 'EX', ARGV[2])
    table.insert(out, v)
  end
end
return out
