// The rest of the original's latest credential lifecycle (issue 7) with the official client,
// against a gateway of its own (LIFECYCLE_GATEWAY_URL: Redis-backed, a 1 s session sweep), so a
// suspended organisation or a revoked user never touches the other files' tests:
// token binding at the handshake (a re-paired token is refused, NULL and raw-token rows still
// connect), tenant suspension and resumption, both dashboard session-expiry reasons, and the
// notification broadcast with its per-user form. Redis keys the middleware would write are set
// with `redis-cli` (installed with redis-server).

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import {
  Recorder,
  closeAll,
  connected,
  dashboardOptions,
  env,
  heartbeat,
  internalPost,
  nextEvent,
  open,
  playerOptions,
} from './lib.mjs';

const URL = env('LIFECYCLE_GATEWAY_URL');
const post = (path, body) => internalPost(path, body, URL);

after(closeAll);

/** What the middleware writes into the shared Redis. */
function redisSet(key, value) {
  execFileSync('redis-cli', ['-u', env('LIFECYCLE_REDIS_URL'), 'SET', key, String(value)], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

/** A client refused for good: one `connect_error` with exactly `message`, no retry. */
async function refused(opts, message) {
  const s = open(URL, opts);
  try {
    const [err] = await nextEvent(s, 'connect_error', 10000);
    assert.equal(err.message, message);
    assert.equal(s.active, false, 'a final refusal is not retried');
  } finally {
    s.close();
  }
}

async function connectedDevice(token) {
  const s = open(URL, playerOptions(token));
  const rec = new Recorder(s);
  await connected(s);
  assert.equal((await heartbeat(s)).success, true);
  return { s, rec };
}

async function connectedDashboard(token) {
  const s = open(URL, dashboardOptions(token));
  const rec = new Recorder(s);
  await connected(s);
  return { s, rec };
}

describe('token binding', () => {
  test('a token the device was re-paired away from is refused with device_revoked', { timeout: 30000 }, async () => {
    await refused(playerOptions(env('REPAIRED_OLD_TOKEN_L1')), 'unauthorized: device_revoked');
    // The token the row is bound to connects.
    const { s } = await connectedDevice(env('REPAIRED_NEW_TOKEN_L1'));
    s.close();
  });

  test('rows with a NULL jwtToken or the raw token (older middleware) still connect', { timeout: 30000 }, async () => {
    for (const name of ['NULL_ROW_TOKEN_L2', 'RAW_ROW_TOKEN_L3']) {
      const { s } = await connectedDevice(env(name));
      s.close();
    }
  });
});

describe('tenant entitlement', () => {
  test('suspension reaches devices and dashboards, refuses handshakes, and resumption lifts it', { timeout: 30000 }, async () => {
    const dev = await connectedDevice(env('SUSPEND_DEVICE_TOKEN_S1'));
    const dash = await connectedDashboard(env('SUSPEND_USER_TOKEN'));

    const bad = await post('/api/internal/tenant-entitlement', { organizationId: env('ORG_B'), state: 'paused' });
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.json.message, /^state/);

    const r = await post('/api/internal/tenant-entitlement', {
      organizationId: env('ORG_B'),
      state: 'suspended',
      reason: 'payment_failed',
    });
    assert.ok(r.status >= 200 && r.status < 300, r.text);
    assert.equal(r.json.success, true);
    for (const c of [dev, dash]) {
      assert.deepEqual(await c.rec.next('tenant:suspended'), { reason: 'payment_failed' });
    }
    await refused(playerOptions(env('SUSPEND_DEVICE_TOKEN_S2')), 'unauthorized: tenant_suspended');
    assert.equal((await heartbeat(dev.s)).success, true, 'connected screens are not cut off');

    const back = await post('/api/internal/tenant-entitlement', { organizationId: env('ORG_B'), state: 'resumed' });
    assert.ok(back.status >= 200 && back.status < 300, back.text);
    for (const c of [dev, dash]) {
      await c.rec.next('tenant:resumed');
    }
    const again = await connectedDevice(env('SUSPEND_DEVICE_TOKEN_S2'));
    again.s.close();
    dev.s.close();
    dash.s.close();
  });
});

describe('dashboard sessions', () => {
  test('a revoked user and a session older than a password change are expired, then refused', { timeout: 30000 }, async () => {
    const revoked = await connectedDashboard(env('USER_TOKEN_REVOKED'));
    const changed = await connectedDashboard(env('USER_TOKEN_PWD_CHANGED'));
    const kept = await connectedDashboard(env('USER_TOKEN_KEPT'));

    // Listen before the markers exist: both sessions end in the same sweep.
    const gone = [revoked, changed].map((c) => nextEvent(c.s, 'disconnect', 10000));
    const now = Math.floor(Date.now() / 1000);
    redisSet(`user_revoked:${env('USER_REVOKED')}`, 1);
    redisSet(`pwd_changed:${env('USER_PWD_CHANGED')}`, now + 5);
    redisSet(`pwd_changed:${env('USER_KEPT')}`, now - 600);

    for (const [i, [c, reason]] of [
      [revoked, 'revoked'],
      [changed, 'password_changed'],
    ].entries()) {
      // The sweep runs every second (`credentials.rs` holds it to two intervals).
      assert.deepEqual(await c.rec.next('session:expired', () => true, 5000), { reason });
      const [why] = await gone[i];
      assert.equal(why, 'io server disconnect', `${reason}: the dashboard does not reconnect by itself`);
    }
    const ack = await kept.s.timeout(5000).emitWithAck('join:organization', { organizationId: env('ORG_A') });
    assert.equal(ack.success, true);
    assert.equal(kept.rec.count('session:expired'), 0);

    for (const name of ['USER_TOKEN_REVOKED', 'USER_TOKEN_PWD_CHANGED']) {
      await refused(dashboardOptions(env(name)), 'unauthorized: auth_invalid');
    }
    kept.s.close();
  });
});

describe('notifications', () => {
  test('a broadcast reaches the organisation\'s dashboards; one with a userId only that user\'s', { timeout: 30000 }, async () => {
    const u1 = await connectedDashboard(env('NOTIFY_USER_TOKEN_1'));
    const u2 = await connectedDashboard(env('NOTIFY_USER_TOKEN_2'));

    const all = await post('/api/notifications/broadcast', {
      organizationId: env('ORG_A'),
      notification: { id: 'js-n1', title: 'Hello' },
    });
    assert.ok(all.status >= 200 && all.status < 300, all.text);
    for (const c of [u1, u2]) {
      const n = await c.rec.next('notification:new');
      assert.equal(n.id, 'js-n1');
    }

    await post('/api/notifications/broadcast', {
      organizationId: env('ORG_A'),
      notification: { id: 'js-n2', userId: env('NOTIFY_USER_2') },
    });
    assert.equal((await u2.rec.next('notification:new')).id, 'js-n2');
    // The next org-wide one is what u1 sees next: the per-user one never reached it.
    await post('/api/notifications/broadcast', { organizationId: env('ORG_A'), notification: { id: 'js-n3' } });
    assert.equal((await u1.rec.next('notification:new')).id, 'js-n3');
    assert.equal((await u2.rec.next('notification:new')).id, 'js-n3');
    assert.equal(u1.rec.count('notification:new'), 2);

    const bad = await post('/api/notifications/broadcast', { organizationId: env('ORG_A') });
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.json.message, /^notification/);
    u1.s.close();
    u2.s.close();
  });
});
