// Refusal semantics the players depend on. A final refusal (bad credentials) is a `connect_error`
// whose message contains `unauthorized`: the players clear their token and re-pair, and
// socket.io-client stops retrying. A transient refusal (rate limit) is a transport error that
// leaves the client retrying with its own backoff until it gets in.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { closeAll, connected, env, heartbeat, nextEvent, open, playerOptions, sleep } from './lib.mjs';

const URL = env('GATEWAY_URL');

after(closeAll);

/** Opens a player client with `token` and checks it is refused for good with `message`. */
async function assertRefusedForGood(token, message) {
  const s = open(URL, playerOptions(token));
  let connects = 0;
  let errors = 0;
  s.on('connect', () => {
    connects += 1;
  });
  s.on('connect_error', () => {
    errors += 1;
  });
  try {
    const [err] = await nextEvent(s, 'connect_error', 10000);
    // What the players test (`device-client.ts`, `display-android/src/main.ts`).
    assert.ok(err.message.includes('unauthorized'), `message: ${err.message}`);
    assert.equal(err.message, message);
    assert.equal(s.active, false, 'socket.io-client must not retry a final refusal');
    // The CONNECT_ERROR packet is `{message}` alone, as socket.io's `next(new Error(message))`
    // sends it: the players read nothing else.
    assert.equal(err.data, undefined, 'no `data` next to the message');
    // Longer than the reconnection delay: nothing else happens.
    await sleep(3000);
    assert.equal(connects, 0, '`connect` never fires');
    assert.equal(errors, 1, 'no further attempts');
    assert.equal(s.connected, false);
    assert.equal(s.active, false);
  } finally {
    s.close();
  }
}

/** `{e}` on the first `connect_error`, `{}` on `connect`, whichever comes first. */
function firstOf(socket, timeout) {
  return new Promise((resolve, reject) => {
    const done = (v) => {
      clearTimeout(timer);
      socket.off('connect_error', onErr);
      socket.off('connect', onConnect);
      resolve(v);
    };
    const onErr = (e) => done({ e });
    const onConnect = () => done({});
    const timer = setTimeout(() => {
      socket.off('connect_error', onErr);
      socket.off('connect', onConnect);
      reject(new Error(`neither connect nor connect_error within ${timeout} ms`));
    }, timeout);
    socket.on('connect_error', onErr);
    socket.on('connect', onConnect);
  });
}

describe('final refusals', () => {
  test('a device token signed with the wrong secret', { timeout: 30000 }, async () => {
    await assertRefusedForGood(env('BAD_SECRET_DEVICE_TOKEN'), 'unauthorized: auth_invalid');
  });

  test('an expired device token', { timeout: 30000 }, async () => {
    await assertRefusedForGood(env('EXPIRED_DEVICE_TOKEN'), 'unauthorized: auth_expired');
  });

  test('a malformed token', { timeout: 30000 }, async () => {
    await assertRefusedForGood('not-a-jwt', 'unauthorized: auth_invalid');
  });

  test('a valid token for a device that does not exist', { timeout: 30000 }, async () => {
    await assertRefusedForGood(env('MISSING_DEVICE_TOKEN'), 'unauthorized: device_not_found');
  });

  test("a device token whose organisation is not the device's", { timeout: 30000 }, async () => {
    await assertRefusedForGood(env('WRONG_ORG_DEVICE_TOKEN'), 'unauthorized: auth_invalid');
  });

  test('a dashboard without a token (the shipped dashboard at fcfe6341)', { timeout: 30000 }, async () => {
    const s = open(URL, { auth: { organizationId: env('ORG_A') }, transports: ['websocket', 'polling'], reconnectionAttempts: 5 });
    try {
      const [err] = await nextEvent(s, 'connect_error', 10000);
      assert.equal(err.message, 'unauthorized: auth_invalid');
      assert.equal(s.active, false);
    } finally {
      s.close();
    }
  });
});

describe('transient refusals (gateway with 1 handshake/s per IP, burst 1)', () => {
  const LIMITED = env('LIMITED_GATEWAY_URL');

  test('a rate-limited client keeps retrying and gets in by itself', { timeout: 60000 }, async (t) => {
    const first = open(LIMITED, playerOptions(env('DEVICE_TOKEN_A1')));
    await connected(first, 15000);

    // The bucket is empty now: a polling client's handshake gets HTTP 429. (On a loaded machine
    // the bucket may have refilled already; then that client's own handshake empties it and the
    // next attempt is refused.)
    let second = null;
    let errors = [];
    let err = null;
    for (let attempt = 0; attempt < 3 && !err; attempt += 1) {
      second = open(LIMITED, { ...playerOptions(env('DEVICE_TOKEN_A2')), transports: ['polling'] });
      errors = [];
      second.on('connect_error', (e) => errors.push(e));
      const outcome = await firstOf(second, 10000);
      if (outcome.e) {
        err = outcome.e;
      } else {
        t.diagnostic('the bucket had refilled: trying again');
        second.close();
      }
    }
    assert.ok(err, 'a handshake right after another one is refused');
    assert.ok(
      err.description === 429 || err.context?.status === 429,
      `a transport error with HTTP 429, got message=${err.message} description=${err.description} status=${err.context?.status}`,
    );
    assert.ok(!String(err.message).includes('unauthorized'), 'never an `unauthorized` refusal');
    assert.equal(err.data, undefined, 'not a Socket.IO CONNECT_ERROR packet');
    assert.equal(second.active, true, 'the client keeps retrying');

    await connected(second, 15000);
    assert.ok(errors.every((e) => !String(e.message).includes('unauthorized')));
    const ack = await heartbeat(second);
    assert.equal(ack.success, true);

    // The same for the players' websocket-first options: the refused upgrade is a transport
    // error and the client retries.
    const third = open(LIMITED, playerOptions(env('DEVICE_TOKEN_B1')));
    const thirdErrors = [];
    third.on('connect_error', (e) => thirdErrors.push(e));
    await connected(third, 15000);
    for (const e of thirdErrors) {
      assert.ok(!String(e.message).includes('unauthorized'), `third: ${e.message}`);
      assert.equal(e.data, undefined);
    }
    assert.equal(third.active, true);

    t.diagnostic(
      `polling client: ${errors.length} refusal(s) before connecting; websocket-first client: ${thirdErrors.length} ` +
        `(${thirdErrors.map((e) => e.message).join(', ') || 'none'})`,
    );

    // The first client was never disturbed.
    assert.equal(first.connected, true);
    first.close();
    second.close();
    third.close();

    // What the refusal looks like on the wire: 429 with Retry-After and a JSON body naming the cause.
    const handshake = `${LIMITED}/socket.io/?EIO=4&transport=polling`;
    let refused = null;
    for (let i = 0; i < 5 && !refused; i += 1) {
      const res = await fetch(handshake);
      const body = await res.text();
      if (res.status === 429) {
        refused = { res, body };
      }
    }
    assert.ok(refused, 'back-to-back handshakes are refused');
    assert.ok(Number(refused.res.headers.get('retry-after')) >= 1, 'Retry-After');
    assert.equal(JSON.parse(refused.body).error, 'rate_limited');
  });
});
