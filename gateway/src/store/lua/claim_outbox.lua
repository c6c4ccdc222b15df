-- claim_outbox: one drain step on one impression stream, in one round trip (a cluster has 256
-- such streams, polled every IMPRESSION_FLUSH_MS by every replica, so an empty stream must cost
-- one cheap command, not three). Hands out, in this order: the entries this consumer already
-- holds (a failed write, or a restart under the same replica id); entries other consumers have
-- held for longer than ARGV[4] ms (a dead replica); new entries. A stream whose group vanished
-- with Redis's data gets its group again, from the start of the stream.
-- KEYS: 1 the stream   ARGV: 1 group 2 consumer 3 count 4 min idle ms
-- Returns [[id, [field, value, ...] or nil], ...].
-- An empty stream holds nothing pending either: entries are acknowledged and deleted together.
if redis.call('XLEN', KEYS[1]) == 0 then return {} end
local function entries(reply)
  if not reply then return {} end
  return reply[1][2]
end
local own = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '0')
if type(own) == 'table' and own.err then
  if string.find(own.err, 'NOGROUP', 1, true) == nil then return own end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
  own = false
end
local held = entries(own)
if #held > 0 then return held end
local auto = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', ARGV[3])
if #auto[2] > 0 then return auto[2] end
return entries(redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>'))
