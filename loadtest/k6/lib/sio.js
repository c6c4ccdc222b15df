// A minimal Socket.IO v4 (Engine.IO 4) client over k6's websocket module, plus HS256 tokens.
// Only what the load scripts need: websocket transport, namespace "/", auth in CONNECT, events,
// acks both ways, ping/pong. Packet grammar: Engine.IO type digit, then for messages ("4") the
// Socket.IO type digit, an optional ack id, then a JSON array.
import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout } from 'k6/timers';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

export function envInt(name, fallback) {
  const v = env(name, undefined);
  if (v === undefined) return fallback;
  const n = parseInt(v, 10);
  if (Number.isNaN(n)) throw new Error(`${name} must be an integer, got "${v}"`);
  return n;
}

// Ids as `vizora-gateway seed` creates them: device i belongs to organisation i % orgs.
export function deviceId(prefix, i) { return `${prefix}-dev-${i}`; }
export function orgId(prefix, k) { return `${prefix}-org-${k}`; }

function b64url(s) { return encoding.b64encode(s, 'rawurl'); }

export function signHs256(claims, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.hmac('sha256', secret, `${head}.${body}`, 'base64rawurl');
  return `${head}.${body}.${sig}`;
}

export function deviceToken(secret, device, org, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  return signHs256({ sub: device, deviceIdentifier: device, organizationId: org, type: 'device',
    iat: now, exp: now + (ttlSeconds || 86400) }, secret);
}

export function userToken(secret, user, org, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  return signHs256({ sub: user, email: `${user}@load.test`, organizationId: org, role: 'admin',
    type: 'user', iat: now, exp: now + (ttlSeconds || 86400) }, secret);
}

export function wsUrl(base) {
  return `${base.replace(/^http/, 'ws').replace(/\/$/, '')}/socket.io/?EIO=4&transport=websocket`;
}

// Opens one Socket.IO session. `h` holds callbacks:
//   onConnect(sock), onEvent(name, args, ackFn|null), onRefused(kind, detail) where kind is
//   'connect_error' (final: bad credentials) or 'transport' (handshake refused or dropped:
//   retry), onClose(serverDisconnect: bool).
// Returns a handle with emit(name, data), emitAck(name, data, cb(args, rttMs)), close().
export function open(base, auth, h) {
  const ws = new WebSocket(wsUrl(base));
  let nextAck = 1;
  const pending = {};
  let connected = false;
  let serverDisconnect = false;
  let finished = false;
  const sock = {
    ws,
    connected: () => connected,
    emit(name, data) { ws.send(`42${JSON.stringify([name, data])}`); },
    emitAck(name, data, cb, timeoutMs) {
      const id = nextAck++;
      const sent = Date.now();
      const timer = setTimeout(() => { if (pending[id]) { delete pending[id]; cb(null, null); } }, timeoutMs || 10000);
      pending[id] = (args) => { clearTimeout(timer); cb(args, Date.now() - sent); };
      pending[id].timer = timer;
      ws.send(`42${id}${JSON.stringify([name, data])}`);
    },
    close() {
      if (finished) { ws.close(); return; }
      finished = true;
      // Our own close: acks still in flight are abandoned, not failures.
      for (const id of Object.keys(pending)) { clearTimeout(pending[id].timer); delete pending[id]; }
      try { if (connected) ws.send('41'); } catch (_) { /* already closed */ }
      ws.close();
    },
  };
  ws.onmessage = (e) => {
    const m = e.data;
    if (m === '2') { ws.send('3'); return; }
    if (m[0] === '0') { ws.send(`40${JSON.stringify(auth)}`); return; }
    if (m[0] !== '4') return;
    const t = m[1];
    let rest = m.slice(2);
    let id = null;
    const digits = rest.match(/^\d+/);
    if (digits && (t === '2' || t === '3')) { id = parseInt(digits[0], 10); rest = rest.slice(digits[0].length); }
    if (t === '0') { connected = true; if (h.onConnect) h.onConnect(sock); return; }
    if (t === '4') { finished = true; if (h.onRefused) h.onRefused('connect_error', rest); ws.close(); return; }
    if (t === '1') {
      // A Socket.IO disconnect from the server: socket.io-client would not reconnect after it.
      serverDisconnect = true;
      finished = true;
      if (h.onClose) h.onClose(true);
      ws.close();
      return;
    }
    let arr;
    try { arr = JSON.parse(rest); } catch (_) { return; }
    if (t === '3' && id !== null && pending[id]) { const f = pending[id]; delete pending[id]; f(arr); return; }
    if (t === '2' && h.onEvent) {
      const ack = id === null ? null : (payload) => ws.send(`43${id}${JSON.stringify([payload])}`);
      h.onEvent(arr[0], arr.slice(1), ack);
    }
  };
  ws.onerror = (e) => {
    if (!connected && !finished) { finished = true; if (h.onRefused) h.onRefused('transport', String(e.error || e)); }
  };
  ws.onclose = () => {
    for (const id of Object.keys(pending)) { pending[id](null); delete pending[id]; }
    if (!connected && !finished) { finished = true; if (h.onRefused) h.onRefused('transport', 'closed before CONNECT'); return; }
    if (finished) return;
    finished = true;
    if (connected && h.onClose) h.onClose(serverDisconnect);
  };
  return sock;
}

// What the Electron player sends every interval (extra keys included, as the shipped players do).
export function heartbeatPayload(i) {
  return {
    timestamp: Date.now(),
    status: 'online',
    metrics: { cpuUsage: 5 + (i % 50), memoryUsage: 30 + (i % 40), storageUsed: 1024 },
    currentContent: { contentId: 'load-content', playlistId: 'load-playlist', status: 'playing' },
    appVersion: 'k6-load/1.0',
  };
}

// socket.io-client's reconnection delay: 1 s doubling to 5 s, ±50 % jitter.
export function backoffMs(attempt) {
  const base = Math.min(5000, 1000 * Math.pow(2, attempt));
  return Math.floor(base * (0.5 + Math.random()));
}
