// dashboard-fanout.js — dashboards watch organisations while the script pushes org broadcasts
// and device commands through the internal API (any replica), and measures end-to-end delivery
// latency at the dashboards and at the devices. Parameters: loadtest/README.md.
import http from 'k6/http';
import { Trend, Counter, Rate } from 'k6/metrics';
import { setTimeout } from 'k6/timers';
import { sleep } from 'k6';
import * as sio from './lib/sio.js';

const BASE = sio.env('GATEWAY_URL', 'http://127.0.0.1:3002');
// Internal API targets: a comma list, so pushes can enter through every replica.
const API = sio.env('API_URLS', BASE).split(',').map((u) => u.trim().replace(/\/$/, ''));
const DEVICE_SECRET = sio.env('DEVICE_JWT_SECRET', '');
const USER_SECRET = sio.env('JWT_SECRET', '');
const API_KEY = sio.env('INTERNAL_API_SECRET', '');
const PREFIX = sio.env('PREFIX', 'load');
const ORGS = sio.envInt('ORGS', 10);
const DEVICES = sio.envInt('DEVICES', 100);
const DASHBOARDS = sio.envInt('DASHBOARDS', 10);
const PUSH_PER_S = sio.envInt('PUSH_PER_S', 5);
const HOLD_S = sio.envInt('HOLD_S', 30);
const RAMP_PER_S = sio.envInt('RAMP_PER_S', 200);
const FANOUT_P99_MS = sio.envInt('FANOUT_P99_MS', 500);
const SETTLE_S = Math.ceil((DEVICES + DASHBOARDS) / RAMP_PER_S) + 3;

const fanoutDevice = new Trend('fanout_device_ms', true);
const fanoutDashboard = new Trend('fanout_dashboard_ms', true);
const commandLatency = new Trend('command_delivery_ms', true);
const received = new Counter('broadcasts_received');
const commandsReceived = new Counter('commands_received');
const pushOk = new Rate('push_ok');
const connected = new Rate('socket_connected');
const refusals = new Counter('refusals');
const MAX_ATTEMPTS = 5;

export const options = {
  scenarios: {
    devices: { executor: 'per-vu-iterations', vus: DEVICES, iterations: 1, exec: 'device',
      maxDuration: `${SETTLE_S + HOLD_S + 30}s` },
    dashboards: { executor: 'per-vu-iterations', vus: DASHBOARDS, iterations: 1, exec: 'dashboard',
      maxDuration: `${SETTLE_S + HOLD_S + 30}s` },
    pushes: { executor: 'constant-arrival-rate', rate: PUSH_PER_S, timeUnit: '1s', exec: 'push',
      startTime: `${SETTLE_S}s`, duration: `${HOLD_S}s`, preAllocatedVUs: 5, maxVUs: 50 },
  },
  thresholds: {
    socket_connected: ['rate>0.99'],
    push_ok: ['rate>0.99'],
    broadcasts_received: ['count>0'],
    fanout_device_ms: [`p(99)<${FANOUT_P99_MS}`],
    fanout_dashboard_ms: [`p(99)<${FANOUT_P99_MS}`],
    command_delivery_ms: [`p(99)<${FANOUT_P99_MS}`],
  },
};

export function setup() {
  for (const [n, v] of [['DEVICE_JWT_SECRET', DEVICE_SECRET], ['JWT_SECRET', USER_SECRET], ['INTERNAL_API_SECRET', API_KEY]]) {
    if (v.length < 32) throw new Error(`${n} (the gateway's, at least 32 bytes) is required`);
  }
}

// Holds one socket until `endAt` (ms since the epoch). A refused or dropped handshake is
// retried with backoff, as socket.io-client does: the gateway closes the transport on purpose
// when a handshake cannot finish in time (contract §2), so only a final refusal (connect_error)
// or running out of attempts counts as not connected. Every refusal is counted by kind, and a
// slow or final one is logged, so a retry that saved the threshold still shows in the output.
function watch(who, auth, onEvent, endAt, attempt = 0) {
  const started = Date.now();
  sio.open(BASE, auth, {
    onConnect(sock) { connected.add(1); setTimeout(() => sock.close(), Math.max(0, endAt - Date.now())); },
    onEvent,
    onRefused(kind, detail) {
      refusals.add(1, { kind });
      // A quick refusal (429/503 at the edge) is routine under a storm; a slow one is not.
      const took = Date.now() - started;
      if (kind === 'connect_error' || took > 1000) console.warn(`${who}: handshake ${kind} after ${took} ms (attempt ${attempt + 1}): ${detail}`);
      if (kind === 'connect_error' || attempt + 1 >= MAX_ATTEMPTS) { connected.add(0); return; }
      setTimeout(() => watch(who, auth, onEvent, endAt, attempt + 1), sio.backoffMs(attempt));
    },
  });
}

function latencyOf(data) {
  return data && typeof data.sentAt === 'number' ? Date.now() - data.sentAt : null;
}

export function device() {
  const i = __VU - 1;
  sleep(i / RAMP_PER_S);
  const id = sio.deviceId(PREFIX, i);
  const token = sio.deviceToken(DEVICE_SECRET, id, sio.orgId(PREFIX, i % ORGS));
  watch(id, { token }, (name, args) => {
    if (name === 'loadtest:ping') { const l = latencyOf(args[0]); if (l !== null) { fanoutDevice.add(l); received.add(1); } }
    if (name === 'command') {
      const l = latencyOf(args[0] && args[0].payload);
      commandsReceived.add(1);
      if (l !== null) commandLatency.add(l);
    }
  }, Date.now() + (SETTLE_S - i / RAMP_PER_S + HOLD_S + 2) * 1000);
}

export function dashboard() {
  const k = (__VU - 1) % ORGS;
  sleep((DEVICES + __VU - 1) / RAMP_PER_S);
  const user = `load-user-${__VU}`;
  const token = sio.userToken(USER_SECRET, user, sio.orgId(PREFIX, k));
  watch(user, { token }, (name, args) => {
    if (name === 'loadtest:ping') { const l = latencyOf(args[0]); if (l !== null) { fanoutDashboard.add(l); received.add(1); } }
  }, Date.now() + (HOLD_S + 2) * 1000 + (SETTLE_S - (DEVICES + __VU - 1) / RAMP_PER_S) * 1000);
}

let n = 0;
export function push() {
  n += 1;
  const api = API[(__VU + n) % API.length];
  const headers = { 'content-type': 'application/json', 'x-internal-api-key': API_KEY };
  const org = sio.orgId(PREFIX, Math.floor(Math.random() * ORGS));
  const b = http.post(`${api}/api/push/broadcast`, JSON.stringify({ organizationId: org, event: 'loadtest:ping', data: { sentAt: Date.now() } }), { headers });
  pushOk.add(b.status >= 200 && b.status < 300);
  const dev = sio.deviceId(PREFIX, Math.floor(Math.random() * DEVICES));
  const c = http.post(`${api}/api/internal/command`, JSON.stringify({ deviceId: dev, command: { type: 'loadtest', payload: { sentAt: Date.now() } } }), { headers });
  pushOk.add(c.status >= 200 && c.status < 300);
}
