// connect-storm.js — a reconnect wave: every screen connects at once (refusals from the
// limiter are expected and retried with socket.io-client's backoff), then every screen opens a
// second connection before closing the first, as a player does after a network flap. Checks that
// every refused screen gets in eventually, that the newer socket always wins (the older one gets
// a server disconnect, the newer one never does), and that nobody is left out.
// Parameters: loadtest/README.md.
import { Counter, Rate, Trend } from 'k6/metrics';
import { setTimeout } from 'k6/timers';
import * as sio from './lib/sio.js';

const BASE = sio.env('GATEWAY_URL', 'http://127.0.0.1:3002');
const SECRET = sio.env('DEVICE_JWT_SECRET', '');
const PREFIX = sio.env('PREFIX', 'load');
const ORGS = sio.envInt('ORGS', 10);
const DEVICES = sio.envInt('DEVICES', 200);
const HOLD_S = sio.envInt('HOLD_S', 5);
const MAX_ATTEMPTS = sio.envInt('MAX_ATTEMPTS', 30);

const inFirst = new Rate('storm_connected');
const inSecond = new Rate('wave_connected');
const refused = new Counter('storm_refusals');
const timeToIn = new Trend('storm_time_to_connect_ms', true);
const newerLost = new Counter('newer_socket_disconnected');
const olderEnded = new Rate('older_socket_superseded');

export const options = {
  scenarios: {
    storm: { executor: 'per-vu-iterations', vus: DEVICES, iterations: 1, maxDuration: `${HOLD_S * 2 + 180}s` },
  },
  thresholds: {
    storm_connected: ['rate==1'],
    wave_connected: ['rate==1'],
    newer_socket_disconnected: ['count==0'],
    older_socket_superseded: ['rate>0.99'],
  },
};

export function setup() {
  if (SECRET.length < 32) throw new Error('DEVICE_JWT_SECRET (the gateway\'s, at least 32 bytes) is required');
}

// Connects with retries; calls then(sock) once in, or gives up after MAX_ATTEMPTS.
function persist(auth, handlers, then, failed, attempt, started) {
  sio.open(BASE, auth, {
    onConnect(sock) { then(sock, Date.now() - started); },
    onEvent: handlers.onEvent,
    onClose: handlers.onClose,
    onRefused(kind) {
      refused.add(1, { kind });
      if (kind === 'connect_error' || attempt + 1 >= MAX_ATTEMPTS) { failed(); return; }
      setTimeout(() => persist(auth, handlers, then, failed, attempt + 1, started), sio.backoffMs(attempt));
    },
  });
}

export default function () {
  const i = __VU - 1;
  const device = sio.deviceId(PREFIX, i);
  const auth = { token: sio.deviceToken(SECRET, device, sio.orgId(PREFIX, i % ORGS)) };
  let olderSuperseded = false;
  persist(auth, { onClose(server) { olderSuperseded = server; } }, (first, ms) => {
    inFirst.add(1);
    timeToIn.add(ms);
    setTimeout(() => {
      // The wave: a second connection while the first is still open.
      let newerDone = false;
      persist(auth, { onClose(server) { if (server && !newerDone) newerLost.add(1); } }, (second) => {
        inSecond.add(1);
        setTimeout(() => {
          olderEnded.add(olderSuperseded || !first.connected());
          newerDone = true;
          first.close();
          second.close();
        }, HOLD_S * 1000);
      }, () => { inSecond.add(0); first.close(); }, 0, Date.now());
    }, HOLD_S * 1000);
  }, () => { inFirst.add(0); }, 0, Date.now());
}
