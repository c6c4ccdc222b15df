-- heartbeat: the whole Redis side of a heartbeat in one round trip: status JSON, latest sample,
-- and an atomic drain of the queued commands (FIFO) -- unless a strictly newer epoch owns the
-- device.
-- KEYS: 1 device:status:{id} 2 heartbeat:{id}:latest 3 device:commands:{id} 4 device:lease:{id}
--       5 device:epoch:{id}
-- ARGV: 1 status_json 2 status_ttl_s 3 latest_json 4 latest_ttl_s 5 epoch (the socket's)
-- Returns {1, commands} for the live socket, {0, {}} for a superseded one: its status would
-- overwrite the live socket's, and the commands it drained would be lost with it.
-- Decided by epoch, as numbers: no lease, or a lease/epoch OLDER than the socket's (Redis
-- restarted, rolled back, or a refresh is due) counts as live; the next refresh re-asserts it.
local mine = tonumber(ARGV[5])
local stored = tonumber(redis.call('GET', KEYS[5]) or '')
if stored and stored > mine then
  return {0, {}}
end
local lease = redis.call('GET', KEYS[4])
if lease then
  local ok, l = pcall(cjson.decode, lease)
  if ok and type(l) == 'table' and (tonumber(l.epoch) or 0) > mine then
    return {0, {}}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local cmds = redis.call('LRANGE', KEYS[3], 0, -1)
if #cmds > 0 then
  redis.call('DEL', KEYS[3])
end
return {1, cmds}
