-- push_error: append to the JSON array errors:device:{id}, keeping the newest 10, atomically.
-- KEYS: 1 errors:device:{id}   ARGV: 1 entry_json 2 ttl_s 3 max
local raw = redis.call('GET', KEYS[1])
local list = {}
if raw then
  local ok, v = pcall(cjson.decode, raw)
  if ok and type(v) == 'table' then list = v end
end
table.insert(list, cjson.decode(ARGV[1]))
while #list > tonumber(ARGV[3]) do
  table.remove(list, 1)
end
redis.call('SET', KEYS[1], cjson.encode(list), 'EX', ARGV[2])
return #list
