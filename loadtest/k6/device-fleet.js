// device-fleet.js — N screens connect with their own tokens, heartbeat on an interval with the
// Electron player's payload, obey commands (acknowledging them when asked) and record
// heartbeat-ack and connect latency. Parameters: loadtest/README.md.
import { Trend, Counter, Rate } from 'k6/metrics';
import { setTimeout, setInterval, clearInterval } from 'k6/timers';
import { sleep } from 'k6';
import * as sio from './lib/sio.js';

const BASE = sio.env('GATEWAY_URL', 'http://127.0.0.1:3002');
const SECRET = sio.env('DEVICE_JWT_SECRET', '');
const PREFIX = sio.env('PREFIX', 'load');
const ORGS = sio.envInt('ORGS', 10);
const DEVICES = sio.envInt('DEVICES', 100);
const OFFSET = sio.envInt('DEVICE_OFFSET', 0);
const RAMP_PER_S = sio.envInt('RAMP_PER_S', 200);
const HEARTBEAT_MS = sio.envInt('HEARTBEAT_MS', 15000);
const HOLD_S = sio.envInt('HOLD_S', 60);
const CAPABILITIES = sio.env('CAPABILITIES', '0') === '1';
const ACK_P99_MS = sio.envInt('ACK_P99_MS', 250);
const CONNECT_P99_MS = sio.envInt('CONNECT_P99_MS', 2000);

const heartbeatAck = new Trend('heartbeat_ack_ms', true);
const connectTime = new Trend('connect_ms', true);
const heartbeatOk = new Rate('heartbeat_ok');
const connected = new Rate('device_connected');
const commands = new Counter('commands_received');
const serverDisconnects = new Counter('server_disconnects');
const refusals = new Counter('handshake_refusals');

export const options = {
  scenarios: {
    fleet: {
      executor: 'per-vu-iterations',
      vus: DEVICES,
      iterations: 1,
      maxDuration: `${Math.ceil(DEVICES / RAMP_PER_S) + HOLD_S + 60}s`,
    },
  },
  thresholds: {
    device_connected: ['rate>0.99'],
    heartbeat_ok: ['rate>0.99'],
    heartbeat_ack_ms: [`p(99)<${ACK_P99_MS}`],
    connect_ms: [`p(99)<${CONNECT_P99_MS}`],
    server_disconnects: ['count==0'],
  },
};

export function setup() {
  if (SECRET.length < 32) throw new Error('DEVICE_JWT_SECRET (the gateway\'s, at least 32 bytes) is required');
}

export default function () {
  const i = OFFSET + __VU - 1;
  const device = sio.deviceId(PREFIX, i);
  const token = sio.deviceToken(SECRET, device, sio.orgId(PREFIX, i % ORGS));
  const auth = CAPABILITIES ? { token, capabilities: { deliveryAck: true } } : { token };
  // Spread connects at RAMP_PER_S, like screens coming up after a power cut.
  sleep((__VU - 1) / RAMP_PER_S);
  connectOnce(device, auth, i, 0);
}

function connectOnce(device, auth, i, attempt) {
  const started = Date.now();
  let beat = null;
  let done = false;
  const s = sio.open(BASE, auth, {
    onConnect(sock) {
      connectTime.add(Date.now() - started);
      connected.add(1);
      // Players heartbeat immediately on connect, then on the interval.
      const send = () => sock.emitAck('heartbeat', sio.heartbeatPayload(i), (args, rtt) => {
        const ok = args !== null && args[0] && args[0].success === true;
        heartbeatOk.add(ok);
        if (ok) heartbeatAck.add(rtt);
        if (ok && Array.isArray(args[0].commands)) commands.add(args[0].commands.length);
      });
      send();
      beat = setInterval(send, HEARTBEAT_MS);
      setTimeout(() => { done = true; clearInterval(beat); sock.close(); }, HOLD_S * 1000);
    },
    onEvent(name, args, ack) {
      if (name === 'command') { commands.add(1); if (ack) ack({ ok: true }); }
      else if (name === 'playlist:update' && ack) ack({ ok: true });
    },
    onRefused(kind) {
      refusals.add(1, { kind });
      if (kind === 'connect_error' || attempt >= 5) { connected.add(0); return; }
      setTimeout(() => connectOnce(device, auth, i, attempt + 1), sio.backoffMs(attempt));
    },
    onClose(server) {
      if (beat) clearInterval(beat);
      if (server) serverDisconnects.add(1);
      else if (!done) setTimeout(() => connectOnce(device, auth, i, 0), sio.backoffMs(0));
    },
  });
  return s;
}
