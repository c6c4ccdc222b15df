// The benchmark's peer (issue 18): a minimal socket.io 4 server that answers the load swarm
// (loadtest/swarm) the way the gateway does for that traffic, so bench.sh can print the
// gateway's figures beside a plain Node implementation of the same work.
//
// Per connection: the device JWT verified as gateway/src/auth.rs does (HS256 only, `type`
// "device" with DEVICE_JWT_SECRET, exp/nbf enforced when present with 5 s leeway, `sub` and
// `organizationId` bounded printable ids), then the rooms `device:{id}` and `org:{orgId}` (and
// the socket's own, which socket.io joins by itself).
// Per heartbeat: the payload validated like gateway/src/wire/events.rs, then ONE run of the
// gateway's own gateway/src/store/lua/device_heartbeat.lua (EVALSHA, SCRIPT LOAD on NOSCRIPT)
// with the same 9 KEYS and 10 ARGV as `device_heartbeat` in gateway/src/store/redis.rs and the
// status/latest JSON of gateway/src/service/device_events.rs, then the same ack:
// {success:true, data:{nextHeartbeatIn, commands}, timestamp, nextHeartbeatIn, commands}.
//
// At connect, with Redis, one pipelined round trip sets `device:epoch:{id}` and
// `device:lease:{id}` (the two keys the script compares), so each heartbeat takes the script's
// full path as the gateway's does.
// Left out (see loadtest/README.md): the device row check and token binding (no database), the
// lease protocol (acquire/confirm/refresh/release scripts, sweep, presence transitions and their
// rows),
// the connect-time `config`/playlist/queued commands, message budgets, connect limits, token
// refresh, dashboards and the internal HTTP API.
//
// Environment (the gateway's names): PORT (3002), HOST (0.0.0.0), DEVICE_JWT_SECRET (required),
// REDIS_URL (unset: in-process adapter and an in-memory map instead of Redis, like the
// gateway's embedded mode), HEARTBEAT_INTERVAL_MS (15000), PING_INTERVAL_MS (25000),
// PING_TIMEOUT_MS (20000), CONNECT_TIMEOUT_MS (10000). HEARTBEAT_LUA overrides the script path.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import jwt from 'jsonwebtoken';
import { Server } from 'socket.io';

const env = process.env;
const num = (k, d) => (env[k] ? Number(env[k]) : d);
const PORT = num('PORT', 3002);
const HOST = env.HOST || '0.0.0.0';
const DEVICE_SECRET = env.DEVICE_JWT_SECRET;
if (!DEVICE_SECRET) {
  console.error('DEVICE_JWT_SECRET must be set');
  process.exit(2);
}
const HEARTBEAT_INTERVAL_MS = num('HEARTBEAT_INTERVAL_MS', 15000);

// gateway/src/store/mod.rs
const STATUS_ONLINE_TTL_S = '60';
const LATEST_TTL_S = '300';
const DELIVERY_ACK_TTL_S = '3600';
// The baseline's stand-in lease key expires instead of being released (no release script).
const LEASE_KEY_TTL_S = 86400;
// gateway/src/auth.rs, gateway/src/service/credentials.rs
const LEEWAY_SECS = 5;
const MAX_TOKEN_LEN = 8 * 1024;
const REFRESH_WITHIN_S = 14 * 86400;
// gateway/src/wire/events.rs
const ID_MAX = 128;
const SHORT_MAX = 32;
const VERSION_MAX = 64;

const scriptPath =
  env.HEARTBEAT_LUA ||
  fileURLToPath(new URL('../../gateway/src/store/lua/device_heartbeat.lua', import.meta.url));
const script = readFileSync(scriptPath, 'utf8');
const scriptSha = createHash('sha1').update(script).digest('hex');

// ---- auth ---------------------------------------------------------------------------------

const validId = (s) => typeof s === 'string' && s.length > 0 && s.length <= 128 && /^[A-Za-z0-9._-]+$/.test(s);

class Refusal extends Error {
  constructor(code) {
    super(`unauthorized: ${code}`);
    this.data = { code: code.toUpperCase() };
  }
}

/** The device principal of a handshake token, or a Refusal (auth.rs `TokenVerifier::verify`). */
function verifyDevice(token) {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LEN) {
    throw new Refusal('auth_invalid');
  }
  const unverified = jwt.decode(token, { complete: true });
  if (!unverified || unverified.header?.alg !== 'HS256') throw new Refusal('auth_invalid');
  // The baseline serves devices only: a user token (any other `type`) is refused here, where
  // the gateway would verify it with JWT_SECRET as a dashboard.
  if (unverified.payload?.type !== 'device') throw new Refusal('auth_invalid');
  let c;
  try {
    c = jwt.verify(token, DEVICE_SECRET, { algorithms: ['HS256'], clockTolerance: LEEWAY_SECS });
  } catch (e) {
    throw new Refusal(e.name === 'TokenExpiredError' ? 'auth_expired' : 'auth_invalid');
  }
  if (!validId(c.sub) || !validId(c.organizationId)) throw new Refusal('auth_invalid');
  return {
    deviceId: c.sub,
    deviceIdentifier: typeof c.deviceIdentifier === 'string' ? c.deviceIdentifier : '',
    organizationId: c.organizationId,
    exp: Number.isInteger(c.exp) ? c.exp : null,
    iat: Number.isInteger(c.iat) ? c.iat : null,
  };
}

/** credentials.rs `capabilities`: (any sent, deliveryAck among them). */
function capabilities(auth) {
  const c = auth?.capabilities;
  if (c === undefined || c === null) return [false, false];
  if (Array.isArray(c)) return [true, c.includes('deliveryAck')];
  if (typeof c === 'object') return [true, c.deliveryAck === true];
  return [true, false];
}

/** credentials.rs `refresh_due` (arithmetic only, as there). */
function refreshDue(d) {
  if (d.exp === null || d.iat === null) return false;
  const remaining = d.exp - Math.floor(Date.now() / 1000);
  return remaining > 0 && remaining <= REFRESH_WITHIN_S && d.exp - d.iat > REFRESH_WITHIN_S;
}

// ---- heartbeat validation (wire/events.rs `heartbeat`) --------------------------------------

class Invalid extends Error {}
const present = (m, k) => (m[k] === undefined || m[k] === null ? undefined : m[k]);
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const join = (path, key) => (path ? `${path}.${key}` : key);

function optString(m, path, key, max) {
  const v = present(m, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new Invalid(`${join(path, key)} must be a string`);
  if ([...v].length > max) throw new Invalid(`${join(path, key)} must be at most ${max} characters`);
  return v;
}

function optNumber(m, path, key, lo, hi) {
  const v = present(m, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Invalid(`${join(path, key)} must be a number`);
  if ((lo !== null && v < lo) || (hi !== null && v > hi)) {
    const problem =
      lo !== null && hi !== null
        ? `must be a number between ${lo} and ${hi}`
        : lo !== null
          ? `must be a number >= ${lo}`
          : `must be a number <= ${hi}`;
    throw new Invalid(`${join(path, key)} ${problem}`);
  }
  return v;
}

const METRICS = [
  ['cpuUsage', 0, 100],
  ['memoryUsage', 0, 100],
  ['diskUsage', 0, null],
  ['networkLatency', 0, null],
  ['temperature', null, null],
];

/** {metrics, currentContent, extra} reduced to the known fields, or throws Invalid. */
function validateHeartbeat(v) {
  const m = v === undefined || v === null ? {} : v;
  if (!isObject(m)) throw new Invalid('payload must be an object');
  let metrics;
  const mm = present(m, 'metrics');
  if (mm !== undefined) {
    if (!isObject(mm)) throw new Invalid('metrics must be an object');
    metrics = {};
    for (const [k, lo, hi] of METRICS) {
      const n = optNumber(mm, 'metrics', k, lo, hi);
      if (n !== undefined) metrics[k] = n;
    }
  }
  let currentContent;
  const cc = m.currentContent;
  if (cc === undefined || cc === null) {
    currentContent = undefined;
  } else if (typeof cc === 'string') {
    if ([...cc].length > ID_MAX) throw new Invalid(`currentContent must be at most ${ID_MAX} characters`);
    currentContent = cc;
  } else if (isObject(cc)) {
    currentContent = {};
    for (const k of ['contentId', 'playlistId']) {
      const s = optString(cc, 'currentContent', k, ID_MAX);
      if (s !== undefined) currentContent[k] = s;
    }
    const pos = optNumber(cc, 'currentContent', 'playbackPosition', 0, null);
    if (pos !== undefined) currentContent.playbackPosition = pos;
    const st = optString(cc, 'currentContent', 'status', SHORT_MAX);
    if (st !== undefined) currentContent.status = st;
  } else {
    throw new Invalid('currentContent must be an object or a content id string');
  }
  const extra = {};
  const uptime = optNumber(m, '', 'uptime', 0, null);
  if (uptime !== undefined) extra.uptime = uptime;
  for (const [k, max] of [
    ['appVersion', VERSION_MAX],
    ['screenState', SHORT_MAX],
    ['playbackSource', SHORT_MAX],
    ['contentVersion', VERSION_MAX],
  ]) {
    const s = optString(m, '', k, max);
    if (s !== undefined) extra[k] = s;
  }
  const ts = m.timestamp;
  if (!(ts === undefined || ts === null || typeof ts === 'number' || (typeof ts === 'string' && ts.length <= 64))) {
    throw new Invalid('timestamp must be a number or a string');
  }
  optString(m, '', 'status', SHORT_MAX);
  return { metrics, currentContent, extra };
}

// ---- the store: the gateway's script on Redis, or a map (embedded) ---------------------------

const redisUrl = env.REDIS_URL;
let store = null;
let pub = null;
let sub = null;
if (redisUrl) {
  // One connection for the script (ioredis pipelines concurrent commands on it), two for the
  // adapter (publish, subscribe), as the gateway keeps its store and adapter connections apart.
  store = new Redis(redisUrl, { lazyConnect: false });
  pub = new Redis(redisUrl);
  sub = pub.duplicate();
}
const memory = new Map();
let redisErrors = 0;

/** EVALSHA with SCRIPT LOAD on NOSCRIPT (what redis-rs's `Script::invoke_async` does). */
async function runHeartbeatScript(keys, args) {
  try {
    return await store.evalsha(scriptSha, keys.length, ...keys, ...args);
  } catch (e) {
    if (!String(e?.message).startsWith('NOSCRIPT')) throw e;
    await store.script('LOAD', script);
    return store.evalsha(scriptSha, keys.length, ...keys, ...args);
  }
}

/** store/redis.rs `device_heartbeat`: {code, commands, pending, held}. */
async function deviceHeartbeat(hb) {
  const d = hb.device;
  if (!store) {
    memory.set(d, { status: hb.statusJson, latest: hb.latestJson });
    return { code: 1, commands: [], pending: '', held: 0 };
  }
  const keys = [
    `device:status:${d}`,
    `heartbeat:${d}:latest`,
    `device:commands:${d}`,
    `device:lease:${d}`,
    `device:token:current:${d}`,
    `device:pending-playlist:${d}`,
    `device:delivery-ack:${d}`,
    `device:epoch:${d}`,
    `device:token:refresh-cooldown:${d}`,
  ];
  const args = [
    hb.statusJson,
    STATUS_ONLINE_TTL_S,
    hb.latestJson,
    LATEST_TTL_S,
    hb.sid,
    hb.bound,
    hb.takePendingPlaylist ? '1' : '0',
    hb.deliveryAck ? DELIVERY_ACK_TTL_S : '',
    hb.epoch,
    hb.refreshDue ? '1' : '0',
  ];
  const [code, commands, pending, held] = await runHeartbeatScript(keys, args);
  return { code: Number(code), commands, pending, held: Number(held) };
}

/** commands.rs `parse_commands`: the stored JSON objects, anything else dropped. */
function parseCommands(raw) {
  const out = [];
  for (const c of raw) {
    try {
      const v = JSON.parse(c);
      if (isObject(v)) out.push(v);
    } catch {
      // not a command
    }
  }
  return out;
}

// The socket's connection epoch, in µs like acquire.lua's max(stored + 1, Redis TIME), but from
// this process's clock (strictly increasing here) and written without reading the stored one.
let lastEpoch = 0;
function nextEpoch() {
  const now = Date.now() * 1000;
  lastEpoch = Math.max(lastEpoch + 1, now);
  return String(lastEpoch);
}

// ---- the server ------------------------------------------------------------------------------

let ready = !store;
const http = createServer((req, res) => {
  if (req.url === '/api/health/ready' || req.url === '/api/health') {
    res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: ready ? 'ok' : 'starting', redisErrors }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(http, {
  path: '/socket.io/',
  transports: ['polling', 'websocket'],
  pingInterval: num('PING_INTERVAL_MS', 25000),
  pingTimeout: num('PING_TIMEOUT_MS', 20000),
  connectTimeout: num('CONNECT_TIMEOUT_MS', 10000),
  serveClient: false,
});
if (pub) io.adapter(createAdapter(pub, sub));

io.use(async (socket, next) => {
  // Devices authenticate with `auth.token` only (no cookie, no query string).
  const token = socket.handshake.auth?.token;
  let d;
  try {
    d = verifyDevice(token);
  } catch (e) {
    return next(e instanceof Refusal ? e : new Refusal('auth_invalid'));
  }
  const [caps, deliveryAck] = capabilities(socket.handshake.auth);
  const epoch = nextEpoch();
  socket.data.device = d;
  socket.data.session = {
    // The seeded rows hold no `jwtToken`: the gateway binds such a socket to "" and the
    // script still reads `device:token:current:{id}` to compare (ARGV 6 "" is not "-").
    bound: '',
    capabilities: caps,
    deliveryAck,
    epoch,
  };
  if (store) {
    // Not the lease protocol (acquire.lua): just the two keys the heartbeat script reads, so it
    // takes the gateway's path (the stored epoch and the lease JSON read and compared) in one
    // pipelined round trip. Refused like the gateway's transient failures when Redis is down.
    const lease = JSON.stringify({ epoch, replica: 'baseline', sid: socket.id, org: d.organizationId });
    try {
      const res = await store
        .pipeline()
        .set(`device:epoch:${d.deviceId}`, epoch)
        .set(`device:lease:${d.deviceId}`, lease, 'EX', LEASE_KEY_TTL_S)
        .exec();
      const failed = res.find(([e]) => e);
      if (failed) throw failed[0];
    } catch {
      redisErrors += 1;
      return next(new Error('unavailable'));
    }
  }
  next();
});

const ok = (data) => ({ success: true, data, timestamp: new Date().toISOString() });
const err = (message) => ({ success: false, error: message, timestamp: new Date().toISOString() });

io.on('connection', (socket) => {
  const d = socket.data.device;
  const session = socket.data.session;
  socket.join([`device:${d.deviceId}`, `org:${d.organizationId}`]);

  socket.on('heartbeat', async (payload, ack) => {
    if (typeof payload === 'function') {
      ack = payload;
      payload = undefined;
    }
    const reply = typeof ack === 'function' ? ack : () => {};
    let hb;
    try {
      hb = validateHeartbeat(payload);
    } catch (e) {
      if (e instanceof Invalid) return reply(err(`Validation failed: ${e.message}`));
      throw e;
    }
    // device_events.rs `heartbeat_step`: the status and latest documents.
    const at = Date.now();
    const status = { status: 'online', lastHeartbeat: at, socketId: socket.id, organizationId: d.organizationId };
    const latest = { deviceId: d.deviceId, timestamp: at };
    if (hb.metrics !== undefined) status.metrics = latest.metrics = hb.metrics;
    if (hb.currentContent !== undefined) status.currentContent = latest.currentContent = hb.currentContent;
    Object.assign(status, hb.extra);
    const due = refreshDue(d);
    let commands = [];
    let pending = '';
    let superseded = false;
    try {
      const f = await deviceHeartbeat({
        device: d.deviceId,
        sid: socket.id,
        epoch: session.epoch,
        statusJson: JSON.stringify(status),
        latestJson: JSON.stringify(latest),
        bound: session.bound,
        takePendingPlaylist: session.capabilities,
        deliveryAck: session.deliveryAck,
        refreshDue: due,
      });
      if (f.code === 1) {
        commands = parseCommands(f.commands);
        pending = f.pending;
      } else if (f.code === 2) {
        // The token this socket is bound to is no longer the device's: told, then ended.
        reply(err('device_token_stale'));
        socket.emit('error', { message: 'device_token_stale' });
        socket.disconnect(true);
        return;
      } else {
        superseded = true;
      }
    } catch {
      // Presence follows the socket, not the heartbeat: Redis down still gets an ack.
      redisErrors += 1;
    }
    // Clients that sent `auth.capabilities` get their commands (and a pending playlist) as
    // events, `commands: []` in the ack.
    const replay = session.capabilities ? commands : [];
    if (session.capabilities) commands = [];
    const data = { nextHeartbeatIn: HEARTBEAT_INTERVAL_MS, commands };
    reply({ ...ok(data), ...data });
    if (superseded) {
      socket.disconnect(true);
      return;
    }
    if (pending) {
      try {
        socket.emit('playlist:update', JSON.parse(pending));
      } catch {
        // not a playlist
      }
    }
    for (const c of replay) socket.emit('command', c);
  });
});

async function start() {
  if (store) {
    // Loaded once at start-up, as the gateway's first EVALSHA would; NOSCRIPT reloads it.
    await store.script('LOAD', script);
    ready = true;
  }
  http.listen(PORT, HOST, () => {
    console.error(`baseline listening on ${HOST}:${PORT} (${store ? 'redis adapter' : 'in-process adapter'}), script ${scriptSha}`);
  });
}

function stop() {
  io.close();
  for (const c of [store, pub, sub]) c?.disconnect();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

start().catch((e) => {
  console.error(e);
  process.exit(1);
});
