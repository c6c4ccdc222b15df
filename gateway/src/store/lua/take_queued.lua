-- take_queued: what was queued for a device (its commands, and the pending playlist when asked),
-- taken by a socket as it connects; a socket that acknowledges deliveries is marked in the same
-- step. One round trip.
-- Only the socket the queue belongs to takes it (the same rule as device_heartbeat.lua's takes):
-- not when a strictly newer epoch owns the device, nor when this socket's lease is gone while
-- Redis still holds its epoch (swept or released). A take that sat in a frozen connection and
-- runs after a partition heals finds the socket's lease swept and takes nothing: its caller gave
-- up on the answer long ago, and the commands wait for the socket that holds the lease. No epoch
-- at all, or an older one, counts as the socket's (Redis lost or rolled back its state).
-- KEYS: 1 device:commands:{id} 2 device:pending-playlist:{id} 3 device:delivery-ack:{id}
--       4 device:lease:{id} 5 device:epoch:{id}
-- ARGV: 1 epoch (the socket's) 2 '1': take the pending playlist 3 ack sid ('' = none)
--       4 ack marker TTL s
-- Returns {commands, pending playlist or ''}.
local mine = tonumber(ARGV[1])
local stored = tonumber(redis.call('GET', KEYS[5]) or '')
local raw = redis.call('GET', KEYS[4])
local owner = 0
if raw then
  local ok, l = pcall(cjson.decode, raw)
  if ok and type(l) == 'table' then
    owner = tonumber(l.epoch) or 0
  end
end
if (stored and stored > mine) or owner > mine or (not raw and stored == mine) then
  return {{}, ''}
end
local cmds = redis.call('LRANGE', KEYS[1], 0, -1)
if #cmds > 0 then
  redis.call('DEL', KEYS[1])
end
local pending = ''
if ARGV[2] == '1' then
  pending = redis.call('GET', KEYS[2]) or ''
  if pending ~= '' then
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
end
return {cmds, pending}
