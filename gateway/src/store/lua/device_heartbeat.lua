-- device_heartbeat: the whole Redis side of a heartbeat (lease check, credential and delivery
-- checks, status, latest sample, queued commands), one round trip.
-- KEYS: 1 device:status:{id} 2 heartbeat:{id}:latest 3 device:commands:{id} 4 device:lease:{id}
--       5 device:token:current:{id} 6 device:pending-playlist:{id} 7 device:delivery-ack:{id}
-- ARGV: 1 status_json 2 status_ttl_s 3 latest_json 4 latest_ttl_s 5 sid
--       6 bound token hash ('-' = no check) 7 take pending playlist ('1'/'0')
--       8 delivery-ack marker TTL ('' = the socket does not acknowledge deliveries)
--       9 epoch (the socket's); KEYS 8 device:epoch:{id}
--       10 '1': the socket's token is due for a refresh, report whether KEYS 9
--          device:token:refresh-cooldown:{id} is held (so a due device costs no second round
--          trip per heartbeat while another connection's refresh holds the cooldown)
-- Returns {code, commands, pending_playlist_or_empty, cooldown_held}: code 1 live,
-- 0 superseded, 2 stale.
-- Superseded: only a strictly newer epoch (stored, or in the lease) supersedes the socket;
-- none, or an older one, counts as the socket's. A socket whose lease is gone while Redis still
-- holds its epoch (swept, or released) writes its status but takes nothing queued (see
-- take_queued.lua): a heartbeat frozen in a partition that runs after the heal must not take
-- what the device's next socket is owed, and a live socket takes it once its refresh revives
-- the lease.
-- A socket whose bound token is no longer the device's (the marker, written by the revocation
-- and rotation paths, says otherwise) writes nothing and takes nothing: it is about to go.
local mine = tonumber(ARGV[9])
local stored = tonumber(redis.call('GET', KEYS[8]) or '')
if stored and stored > mine then
  return {0, {}, '', 0}
end
local lease = redis.call('GET', KEYS[4])
if lease then
  local ok, l = pcall(cjson.decode, lease)
  if ok and type(l) == 'table' and (tonumber(l.epoch) or 0) > mine then
    return {0, {}, '', 0}
  end
end
local takes = lease or stored ~= mine
if ARGV[6] ~= '-' then
  local current = redis.call('GET', KEYS[5])
  if current and current ~= ARGV[6] then
    return {2, {}, '', 0}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[7], ARGV[5], 'EX', ARGV[8])
end
local cmds = {}
if takes then
  cmds = redis.call('LRANGE', KEYS[3], 0, -1)
  if #cmds > 0 then
    redis.call('DEL', KEYS[3])
  end
end
local pending = ''
if takes and ARGV[7] == '1' then
  pending = redis.call('GET', KEYS[6]) or ''
  if pending ~= '' then
    redis.call('DEL', KEYS[6])
  end
end
local held = 0
if ARGV[10] == '1' then
  held = redis.call('EXISTS', KEYS[9])
end
return {1, cmds, pending, held}
