// One live socket per device (a newer connection wins and the older one is told to stop), and the
// three transport configurations a client can use. Devices dev-b1 and dev-a3 are used only here.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Recorder,
  closeAll,
  connected,
  electronHeartbeat,
  env,
  heartbeat,
  nextEvent,
  open,
  playerOptions,
  sleep,
} from './lib.mjs';

const URL = env('GATEWAY_URL');

after(closeAll);

describe('superseding', () => {
  test('a second connection with the same device token supersedes the first', { timeout: 60000 }, async () => {
    const token = env('DEVICE_TOKEN_B1');
    const first = open(URL, playerOptions(token));
    await connected(first);
    assert.equal((await heartbeat(first)).success, true);
    let firstReconnects = 0;
    first.io.on('reconnect_attempt', () => {
      firstReconnects += 1;
    });

    const gone = nextEvent(first, 'disconnect', 10000);
    const second = open(URL, playerOptions(token));
    await connected(second);
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect', 'a server-side disconnect, which the client does not retry');
    assert.equal(first.active, false);
    assert.equal(first.connected, false);

    // Longer than the players' reconnection delay: the first stays down, the second stays up.
    await sleep(3000);
    assert.equal(firstReconnects, 0);
    assert.equal(first.connected, false);
    assert.equal(second.connected, true);
    assert.equal((await heartbeat(second)).success, true);
    first.close();
    second.close();
  });
});

describe('transports', () => {
  const token = () => env('DEVICE_TOKEN_A3');

  async function connectAndHeartbeat(opts, expectTransport) {
    const s = open(URL, opts);
    const rec = new Recorder(s);
    try {
      await connected(s);
      const cfg = await rec.next('config');
      assert.equal(cfg.heartbeatInterval, 15000);
      if (expectTransport === 'upgrade') {
        if (s.io.engine.transport.name !== 'websocket') {
          await nextEvent(s.io.engine, 'upgrade', 10000);
        }
        assert.equal(s.io.engine.transport.name, 'websocket', 'the default client upgrades to websocket');
      } else {
        assert.equal(s.io.engine.transport.name, expectTransport);
      }
      const ack = await heartbeat(s, electronHeartbeat());
      assert.equal(ack.success, true);
      assert.equal(ack.data.nextHeartbeatIn, 15000);
      assert.ok(Array.isArray(ack.commands));
      // A few more round trips on the (possibly upgraded) transport.
      for (let i = 0; i < 3; i += 1) {
        assert.equal((await heartbeat(s)).success, true);
      }
      assert.equal(s.connected, true);
    } finally {
      s.close();
    }
  }

  test("the players' websocket-first options", { timeout: 60000 }, async () => {
    await connectAndHeartbeat(playerOptions(token()), 'websocket');
  });

  test('polling only', { timeout: 60000 }, async () => {
    await connectAndHeartbeat({ ...playerOptions(token()), transports: ['polling'] }, 'polling');
  });

  test('the default client (polling, then upgrade)', { timeout: 60000 }, async () => {
    await connectAndHeartbeat({ auth: { token: token() } }, 'upgrade');
  });

  test('polling only stays connected across several ping intervals', { timeout: 60000 }, async () => {
    const s = open(URL, { ...playerOptions(token()), transports: ['polling'] });
    let disconnects = 0;
    s.on('disconnect', () => {
      disconnects += 1;
    });
    try {
      await connected(s);
      // The runner's gateway pings every second with a 2 s timeout.
      await sleep(4000);
      assert.equal(disconnects, 0);
      assert.equal((await heartbeat(s)).success, true);
    } finally {
      s.close();
    }
  });
});
