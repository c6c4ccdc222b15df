-- token_refresh: at most one token per device per cooldown, cluster-wide, in one round trip.
-- KEYS: 1 device:token:refresh-cooldown:{id} 2 device:token:grace:{id}
-- ARGV: 1 cooldown_s 2 grace_json 3 grace_ttl_s
-- Returns 1 when this caller won the cooldown (and the grace record is written), else 0.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
