-- confirm: the socket has entered the namespace and joined its rooms: its lease stops being
-- `pending`, so commands are sent live from now on. Only the socket named by the lease counts.
-- KEYS: 1 device:lease:{id}   ARGV: 1 sid
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local ok, l = pcall(cjson.decode, raw)
if not ok or type(l) ~= 'table' or l.sid ~= ARGV[1] then
  return 0
end
l.pending = nil
redis.call('SET', KEYS[1], cjson.encode(l), 'KEEPTTL')
return 1
