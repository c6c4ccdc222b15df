// The web dashboard (`web/src/lib/hooks/useSocket.ts` options) with a user token of org-a: the
// status batch, live device:status transitions, and room joins. Device dev-a2 is used only here.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ISO_MS,
  Recorder,
  closeAll,
  connected,
  dashboardOptions,
  env,
  heartbeat,
  open,
  playerOptions,
} from './lib.mjs';

const URL = env('GATEWAY_URL');

after(closeAll);

describe('dashboard', () => {
  test('gets the status batch, then device:status transitions of its organisation', { timeout: 60000 }, async () => {
    const dash = open(URL, dashboardOptions(env('USER_TOKEN_A')));
    const rec = new Recorder(dash);
    try {
      await connected(dash);
      const batch = await rec.next('device:status:batch');
      assert.ok(Array.isArray(batch), 'device:status:batch is an array');
      const ids = batch.map((d) => d.deviceId);
      assert.ok(ids.includes('dev-a2'), `batch lists org-a devices: ${ids}`);
      assert.ok(!ids.includes('dev-b1'), 'and only those');
      for (const d of batch) {
        assert.equal(typeof d.status, 'string');
        assert.ok('lastSeen' in d);
      }

      const dev = open(URL, playerOptions(env('DEVICE_TOKEN_A2')));
      await connected(dev);
      const online = await rec.next('device:status', (d) => d.deviceId === 'dev-a2' && d.status === 'online');
      assert.ok('lastSeen' in online);
      assert.match(online.timestamp, ISO_MS);
      assert.equal((await heartbeat(dev)).success, true);

      dev.close();
      const offline = await rec.next('device:status', (d) => d.deviceId === 'dev-a2' && d.status === 'offline', 15000);
      assert.ok('lastSeen' in offline);
      assert.equal(dash.connected, true);

      // Heartbeats do not produce status events: only transitions do.
      const onlines = rec.events.filter((e) => e.name === 'device:status' && e.args[0].deviceId === 'dev-a2');
      assert.equal(onlines.length, 2, 'one online and one offline event');
    } finally {
      dash.close();
    }
  });

  test('authenticates with the vizora_auth_token cookie when auth.token is absent', { timeout: 30000 }, async () => {
    // Browsers send the cookie; in Node the websocket transport can set it as a header.
    const dash = open(URL, {
      transports: ['websocket'],
      reconnectionAttempts: 5,
      extraHeaders: { cookie: `theme=dark; vizora_auth_token=${env('USER_TOKEN_A')}` },
    });
    const rec = new Recorder(dash);
    try {
      await connected(dash);
      assert.ok(Array.isArray(await rec.next('device:status:batch')));
    } finally {
      dash.close();
    }
  });

  test('join:room with acks: own device room allowed, another organisation refused', { timeout: 60000 }, async () => {
    const dash = open(URL, dashboardOptions(env('USER_TOKEN_A')));
    const rec = new Recorder(dash);
    try {
      await connected(dash);

      const ok = await dash.timeout(5000).emitWithAck('join:room', { room: 'device:dev-a1' });
      assert.equal(ok.success, true, JSON.stringify(ok));
      assert.deepEqual(ok.data, { joined: true, room: 'device:dev-a1' });
      assert.match(ok.timestamp, ISO_MS);

      const own = await dash.timeout(5000).emitWithAck('join:room', { room: 'org:org-a' });
      assert.equal(own.success, true, JSON.stringify(own));

      const refused = await dash.timeout(5000).emitWithAck('join:room', { room: 'org:org-b' });
      assert.equal(refused.success, false);
      assert.equal(typeof refused.error, 'string');
      assert.equal(refused.error, 'Unauthorized: organization mismatch');
      assert.ok(!('data' in refused));
      const err = await rec.next('error');
      assert.equal(err.message, 'Unauthorized: you do not belong to this organization');

      const foreignDevice = await dash.timeout(5000).emitWithAck('join:room', { room: 'device:dev-b1' });
      assert.equal(foreignDevice.success, false);
      assert.equal((await rec.next('error')).message, 'Unauthorized: cannot join this device room');

      const bogus = await dash.timeout(5000).emitWithAck('join:room', { room: 'everything' });
      assert.equal(bogus.success, false);
      assert.equal(bogus.error, 'Invalid room name');

      const left = await dash.timeout(5000).emitWithAck('leave:room', { room: 'device:dev-a1' });
      assert.equal(left.success, true, JSON.stringify(left));

      // The hook's fire-and-forget joins (no ack) are fine too.
      dash.emit('join:room', { room: 'device:dev-a1' });
      dash.emit('join:organization', { organizationId: 'org-a' });
      const joined = await rec.next('joined:organization');
      assert.equal(joined.organizationId, 'org-a');
      assert.equal(dash.connected, true);
    } finally {
      dash.close();
    }
  });
});
