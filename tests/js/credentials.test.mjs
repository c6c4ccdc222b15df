// The original's latest players (issue 7) with the official client: a near-expiry pairing token
// is re-issued over `token:refresh`, `deliveryAck` clients acknowledge `command` and a refused
// one is replayed, queued commands reach a capabilities client as events even when it heartbeats
// on `connect`, and `device:revoked` ends the session. Devices dev-c1..dev-c3 are used only here.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Recorder, closeAll, connected, env, heartbeat, internalPost, nextEvent, open, playerOptions, sleep } from './lib.mjs';

const URL = env('GATEWAY_URL');

after(closeAll);

function claims(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
}

/** The latest players' options: the shipped ones plus `auth.capabilities`. */
function latestPlayer(token, capabilities = { deliveryAck: true }) {
  const o = playerOptions(token);
  return { ...o, auth: { ...o.auth, capabilities } };
}

describe('latest players', () => {
  test('a near-expiry pairing token is re-issued on connect and the new one connects', { timeout: 30000 }, async () => {
    const s = open(URL, latestPlayer(env('NEAR_EXPIRY_TOKEN_C1')));
    const rec = new Recorder(s);
    await connected(s);
    const { token } = await rec.next('token:refresh');
    const c = claims(token);
    assert.equal(c.sub, 'dev-c1');
    assert.equal(c.type, 'device');
    assert.equal(c.organizationId, env('ORG_A'));
    const days = (c.exp - Date.now() / 1000) / 86400;
    assert.ok(days > 89 && days <= 90, `a 90-day token (${days})`);
    s.close();

    const again = open(URL, latestPlayer(token));
    await connected(again);
    assert.equal((await heartbeat(again)).success, true);
    again.close();
  });

  test('a command refused with {ok:false} is replayed on the next heartbeat', { timeout: 30000 }, async () => {
    const s = open(URL, latestPlayer(env('DEVICE_TOKEN_C2')));
    const seen = [];
    const waiters = [];
    /** Resolves once `n` commands have arrived. */
    const arrived = (n) =>
      seen.length >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }));
    s.on('command', (cmd, ack) => {
      assert.equal(typeof ack, 'function', 'command is sent with an ack request');
      seen.push(cmd);
      ack(seen.length === 1 ? { ok: false, error: 'busy' } : { ok: true });
      for (const w of waiters.filter((w) => seen.length >= w.n)) {
        w.resolve();
      }
    });
    await connected(s);
    const r = await internalPost('/api/internal/command', { deviceId: 'dev-c2', command: 'reload' });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.delivery, 'queued', 'a refused delivery is not reported delivered');
    // Sent at once, or (when the POST beat the connect handler) queued and sent by its drain.
    await arrived(1);
    // The refused command is back in the queue once the gateway has read the `{ok:false}`: the
    // next heartbeat replays it as an event, never inside the ack. A heartbeat that overtook the
    // refusal finds nothing yet, so heartbeat until the replay shows up.
    const replayed = arrived(2);
    let done = false;
    replayed.then(() => {
      done = true;
    });
    while (!done) {
      const ack = await heartbeat(s);
      assert.deepEqual(ack.commands, [], 'commands never ride in the ack for these clients');
      await Promise.race([replayed, sleep(200)]);
    }
    assert.equal(seen.length, 2);
    assert.equal(seen[1].id, seen[0].id, 'the same command, replayed');
    s.close();
  });

  test('a queued command arrives as an event although the first heartbeat races the connect', { timeout: 30000 }, async () => {
    const q = await internalPost('/api/internal/command', { deviceId: 'dev-c3', command: 'reload' });
    assert.equal(q.json.delivery, 'queued');
    const s = open(URL, latestPlayer(env('DEVICE_TOKEN_C3'), ['deliveryAck']));
    const rec = new Recorder(s);
    const acks = [];
    s.on('connect', () => {
      acks.push(heartbeat(s));
    });
    s.on('command', (_cmd, ack) => ack({ ok: true }));
    await connected(s);
    const cmd = await rec.next('command');
    assert.equal(cmd.id, q.json.commandId);
    const ack = await acks[0];
    assert.deepEqual(ack.commands, []);

    // Revocation: the event, then a server disconnect the client does not retry.
    const gone = nextEvent(s, 'disconnect');
    const r = await internalPost('/api/internal/device-revoked', { deviceId: 'dev-c3' });
    assert.equal(r.json.success, true);
    assert.deepEqual(await rec.next('device:revoked'), { reason: 'revoked' });
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
  });
});
