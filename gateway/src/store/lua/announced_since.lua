-- Shared by release.lua and retire.lua (prepended to each when the script is built, see
-- store/redis.rs): whether the status key at `key` says offline since `epoch` (Redis TIME in µs
-- at the acquire) — an offline announced after that socket came online.
local function offline_announced_since(key, epoch)
  local ok, st = pcall(cjson.decode, redis.call('GET', key) or '')
  return ok and type(st) == 'table' and st.status == 'offline'
    and (tonumber(st.lastHeartbeat) or 0) * 1000 >= epoch
end
