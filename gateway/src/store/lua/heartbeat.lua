-- heartbeat: the whole Redis side of a heartbeat in one round trip: status JSON, latest sample,
-- and an atomic drain of the queued commands (FIFO).
-- KEYS: 1 device:status:{id} 2 heartbeat:{id}:latest 3 device:commands:{id}
-- ARGV: 1 status_json 2 status_ttl_s 3 latest_json 4 latest_ttl_s
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local cmds = redis.call('LRANGE', KEYS[3], 0, -1)
if #cmds > 0 then
  redis.call('DEL', KEYS[3])
end
return cmds
