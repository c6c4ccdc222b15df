-- heartbeat: the whole Redis side of a heartbeat in one round trip: status JSON, latest sample,
-- and an atomic drain of the queued commands (FIFO) -- unless the lease names another socket.
-- KEYS: 1 device:status:{id} 2 heartbeat:{id}:latest 3 device:commands:{id} 4 device:lease:{id}
-- ARGV: 1 status_json 2 status_ttl_s 3 latest_json 4 latest_ttl_s 5 sid
-- Returns {1, commands} for the live socket, {0, {}} for a superseded one: its status would
-- overwrite the live socket's, and the commands it drained would be lost with it.
-- No lease at all (Redis restarted, or a refresh is due) counts as live: the next refresh
-- re-asserts the lease.
local lease = redis.call('GET', KEYS[4])
if lease then
  local ok, l = pcall(cjson.decode, lease)
  if ok and type(l) == 'table' and l.sid ~= ARGV[5] then
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
