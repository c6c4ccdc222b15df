// Shared helpers for the compatibility suite: the target from the environment (set by the Rust
// runner `tests/tests/compat_js.rs`), the shipped clients' exact socket.io-client options, and
// small promise helpers around socket events.

import { io } from 'socket.io-client';

/** A required environment variable (the runner sets them all). */
export function env(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run this suite through tests/tests/compat_js.rs`);
  }
  return v;
}

/** Electron and Android players: `display/src/electron/device-client.ts`, `display-android/src/main.ts`. */
export function playerOptions(token) {
  return {
    auth: { token },
    transports: ['websocket', 'polling'],
    reconnection: true,
    reconnectionAttempts: Infinity,
    reconnectionDelay: 1000,
    reconnectionDelayMax: 5000,
  };
}

/** Web dashboard: `web/src/lib/hooks/useSocket.ts`. */
export function dashboardOptions(token) {
  return {
    auth: { token },
    transports: ['websocket', 'polling'],
    reconnectionAttempts: 5,
  };
}

/** Every socket opened through `open` is closed by `closeAll` (call it in `after`/`finally`). */
const opened = new Set();

export function open(url, opts) {
  const s = io(url, opts);
  opened.add(s);
  return s;
}

export function closeAll() {
  for (const s of opened) {
    s.close();
  }
  opened.clear();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Records every server → client event of a socket (attach it right after `io()`, before the
 * connection completes, so connect-time events are not missed) and lets a test wait for one.
 * Each recorded event is handed out at most once.
 */
export class Recorder {
  constructor(socket) {
    this.events = [];
    this.waiters = new Set();
    socket.onAny((name, ...args) => {
      const e = { name, args, used: false };
      this.events.push(e);
      for (const w of this.waiters) {
        if (w.name === name && w.pred(...args)) {
          e.used = true;
          this.waiters.delete(w);
          w.resolve(args[0]);
          break;
        }
      }
    });
  }

  /** The first unconsumed `name` event whose payload satisfies `pred`. */
  next(name, pred = () => true, timeout = 10000) {
    const hit = this.events.find((e) => !e.used && e.name === name && pred(...e.args));
    if (hit) {
      hit.used = true;
      return Promise.resolve(hit.args[0]);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.waiters.delete(w)) {
          const got = this.events.map((e) => e.name).join(', ') || 'nothing';
          reject(new Error(`no '${name}' event within ${timeout} ms (received: ${got})`));
        }
      }, timeout);
      const w = {
        name,
        pred,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
      };
      this.waiters.add(w);
    });
  }

  count(name) {
    return this.events.filter((e) => e.name === name).length;
  }
}

/** Resolves once the socket is connected; rejects after `timeout` with the last connect_error. */
export function connected(socket, timeout = 10000) {
  if (socket.connected) {
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    let last = null;
    const onErr = (err) => {
      last = err;
    };
    const timer = setTimeout(() => {
      socket.off('connect', onConnect);
      socket.off('connect_error', onErr);
      reject(new Error(`not connected within ${timeout} ms (last connect_error: ${last?.message ?? 'none'})`));
    }, timeout);
    const onConnect = () => {
      clearTimeout(timer);
      socket.off('connect_error', onErr);
      resolve();
    };
    socket.once('connect', onConnect);
    socket.on('connect_error', onErr);
  });
}

/** The next occurrence of a reserved event (`connect_error`, `disconnect`, ...). */
export function nextEvent(socket, name, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(name, on);
      reject(new Error(`no '${name}' within ${timeout} ms`));
    }, timeout);
    const on = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    socket.once(name, on);
  });
}

/** The Electron player's heartbeat (`device-client.ts`). */
export function electronHeartbeat(currentContent = null) {
  return {
    timestamp: Date.now(),
    metrics: { cpuUsage: 12.34, memoryUsage: 45.6, storageUsed: 0 },
    currentContent,
    status: 'online',
  };
}

/** The Android player's heartbeat (`display-android/src/main.ts`). */
export function androidHeartbeat(currentContent = 'c-img') {
  return {
    timestamp: new Date().toISOString(),
    metrics: { cpuUsage: 0, memoryUsage: 3.2, uptime: 120 },
    currentContent,
    status: 'online',
  };
}

/** Emits a heartbeat the way the players do and returns the ack. */
export function heartbeat(socket, payload = electronHeartbeat()) {
  return socket.timeout(5000).emitWithAck('heartbeat', payload);
}

/** `ISO-8601` with milliseconds and `Z`, as the ack envelope's `timestamp`. */
export const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** POST to the internal API with the key (of GATEWAY_URL unless `base` names another gateway). */
export async function internalPost(path, body, base = env('GATEWAY_URL')) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-internal-api-key': env('INTERNAL_KEY') },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: leave null, the caller asserts on status
  }
  return { status: res.status, json, text };
}

/** GET the presence of a device from the internal API. */
export async function presence(device) {
  const res = await fetch(`${env('GATEWAY_URL')}/api/internal/devices/${device}/presence`, {
    headers: { 'x-internal-api-key': env('INTERNAL_KEY') },
  });
  return { status: res.status, json: await res.json() };
}

/** Polls `f` until it returns a truthy value. */
export async function eventually(what, f, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await f();
    if (v) {
      return v;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    }
    await sleep(100);
  }
}
