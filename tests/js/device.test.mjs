// The shipped players (Electron and Android) against the gateway, with socket.io-client 4.8.4 and
// their exact options. Device dev-a1 (org-a, playlist pl-main) is used only by this file, and its
// tests run one after another.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ISO_MS,
  Recorder,
  androidHeartbeat,
  closeAll,
  connected,
  electronHeartbeat,
  env,
  eventually,
  heartbeat,
  internalPost,
  open,
  playerOptions,
  presence,
  sleep,
} from './lib.mjs';

const URL = env('GATEWAY_URL');
const TOKEN_A1 = env('DEVICE_TOKEN_A1');

after(closeAll);

/** Closes a socket and waits until the gateway no longer counts the device as online. */
async function closeAndWaitOffline(socket, device) {
  socket.close();
  await eventually(`${device} to be offline`, async () => {
    const p = await presence(device);
    return p.status === 200 && p.json.online === false;
  });
}

function assertHeartbeatAck(ack) {
  assert.equal(ack.success, true, `heartbeat ack: ${JSON.stringify(ack)}`);
  assert.match(ack.timestamp, ISO_MS);
  assert.ok(Array.isArray(ack.commands), 'the players read response.commands at the top level');
  assert.equal(ack.nextHeartbeatIn, 15000);
  assert.equal(ack.data.nextHeartbeatIn, 15000);
  assert.ok(Array.isArray(ack.data.commands));
}

describe('Electron player', () => {
  test('connects, gets config and the resolved playlist, heartbeats, reports impressions and errors', { timeout: 60000 }, async () => {
    const s = open(URL, playerOptions(TOKEN_A1));
    const rec = new Recorder(s);
    try {
      await connected(s);
      assert.equal(s.io.engine.transport.name, 'websocket', 'the players try websocket first');

      const cfg = await rec.next('config');
      assert.equal(cfg.heartbeatInterval, 15000);
      assert.equal(typeof cfg.cacheSize, 'number');
      assert.equal(cfg.autoUpdate, true);
      assert.equal(cfg.qrOverlay?.url, 'https://vizora.test/qr', 'qrOverlay from devices.metadata');

      const upd = await rec.next('playlist:update');
      assert.match(upd.timestamp, ISO_MS);
      const pl = upd.playlist;
      assert.equal(pl.id, 'pl-main');
      assert.equal(pl.loopPlaylist, true);
      assert.ok(Array.isArray(pl.items));
      assert.deepEqual(
        pl.items.map((i) => i.contentId),
        ['c-img', 'c-vid', 'c-layout'],
        'items ordered by `order`',
      );
      assert.deepEqual(pl.items.map((i) => i.duration), [10, 20, 10]);
      assert.equal(pl.totalDuration, 40);
      const img = pl.items[0].content;
      assert.equal(img.url, 'http://api.test/api/device-content/c-img/file', 'minio:// resolved against API_BASE_URL');
      assert.equal(pl.items[1].content.url, 'https://cdn.test/promo.mp4');

      // Layout zones: the players read resolvedPlaylist / resolvedContent.
      const layout = pl.items[2].content;
      assert.equal(layout.type, 'layout');
      const zones = layout.metadata.zones;
      assert.equal(zones.length, 2);
      assert.equal(layout.metadata.layoutType, 'split-horizontal', 'other metadata keys are kept');
      const left = zones.find((z) => z.id === 'left');
      const right = zones.find((z) => z.id === 'right');
      assert.equal(left.resolvedPlaylist?.id, 'pl-zone');
      assert.ok(Array.isArray(left.resolvedPlaylist.items));
      assert.equal(left.resolvedPlaylist.items[0].contentId, 'c-zone');
      assert.equal(left.resolvedPlaylist.items[0].duration, 10, '0 falls back to 10');
      assert.equal(left.resolvedPlaylist.items[0].content.url, 'http://api.test/api/device-content/c-zone/file');
      assert.equal(left.playlist?.id, 'pl-zone', 'the original key is kept too');
      assert.equal(right.resolvedContent?.id, 'c-zone');
      assert.equal(right.resolvedContent.url, 'http://api.test/api/device-content/c-zone/file');
      assert.equal(right.content?.id, 'c-zone');

      // The heartbeat exactly as device-client.ts sends it.
      assertHeartbeatAck(await heartbeat(s, electronHeartbeat()));
      assertHeartbeatAck(
        await heartbeat(s, electronHeartbeat({ contentId: 'c-img', playlistId: 'pl-main', playbackPosition: 3, status: 'playing' })),
      );

      // Impressions and errors without ack (the renderer's fire-and-forget emits).
      s.emit('content:impression', { contentId: 'c-img', playlistId: 'pl-main', timestamp: Date.now() });
      s.emit('content:impression', {
        contentId: 'c-img',
        playlistId: 'pl-main',
        duration: 10,
        completionPercentage: 100,
        timestamp: Date.now(),
      });
      s.emit('content:error', { contentId: 'c-vid', errorType: 'playback_error', errorMessage: 'x', timestamp: Date.now() });
      // What the renderer really sends for this gateway's payloads: `content._id` is undefined,
      // so `contentId` is missing. Invalid, but it must not cost the connection.
      s.emit('content:impression', { contentId: undefined, playlistId: undefined, timestamp: Date.now() });
      await sleep(300);
      assert.equal(s.connected, true, 'fire-and-forget emits keep the socket connected');
      assertHeartbeatAck(await heartbeat(s, electronHeartbeat()));
      assert.equal(s.connected, true);
      assert.equal(rec.count('exception'), 0, 'no Nest-style exception events');
    } finally {
      await closeAndWaitOffline(s, 'dev-a1');
    }
  });
});

describe('Android player', () => {
  test('heartbeat with an ISO timestamp, metrics.uptime and a content-id string succeeds', { timeout: 60000 }, async () => {
    const s = open(URL, playerOptions(TOKEN_A1));
    const rec = new Recorder(s);
    try {
      await connected(s);
      const cfg = await rec.next('config');
      assert.equal(cfg.qrOverlay?.enabled, true, 'the Android player renders config.qrOverlay');
      const upd = await rec.next('playlist:update');
      assert.notEqual(upd.playlist.loopPlaylist, false);

      assertHeartbeatAck(await heartbeat(s, androidHeartbeat('c-img')));
      assertHeartbeatAck(await heartbeat(s, androidHeartbeat(null)));

      s.emit('content:impression', { contentId: 'c-img', playlistId: 'pl-main', timestamp: Date.now() });
      s.emit('content:impression', {
        contentId: 'c-img',
        playlistId: 'pl-main',
        duration: 9.5,
        completionPercentage: 95,
        timestamp: Date.now(),
      });
      await sleep(200);
      assertHeartbeatAck(await heartbeat(s, androidHeartbeat('c-vid')));
      assert.equal(s.connected, true);
    } finally {
      await closeAndWaitOffline(s, 'dev-a1');
    }
  });
});

describe('Commands', () => {
  test('POST /api/internal/command reaches the connected device as `command`', { timeout: 60000 }, async () => {
    const s = open(URL, playerOptions(TOKEN_A1));
    const rec = new Recorder(s);
    try {
      await connected(s);
      await rec.next('config');
      await eventually('dev-a1 to be online', async () => (await presence('dev-a1')).json.online === true);

      const res = await internalPost('/api/internal/command', { displayId: 'dev-a1', command: 'reload' });
      assert.equal(res.status, 201, res.text);
      assert.equal(res.json.success, true);

      const cmd = await rec.next('command', (c) => c.type === 'reload');
      assert.equal(cmd.type, 'reload');
      assert.equal(typeof cmd.id, 'string');
      assert.ok(cmd.id.length > 0);
      assert.match(cmd.timestamp, ISO_MS);
      // The contract adds `commandId` to every accepted command: the id the device receives.
      assert.equal(typeof res.json.commandId, 'string', res.text);
      assert.equal(cmd.id, res.json.commandId);

      // The `{type, payload}` form and `deviceId` are accepted too.
      const res2 = await internalPost('/api/internal/command', {
        deviceId: 'dev-a1',
        command: { type: 'qr-overlay-update', payload: { config: { enabled: false } } },
      });
      assert.equal(res2.status, 201, res2.text);
      const cmd2 = await rec.next('command', (c) => c.type === 'qr-overlay-update');
      assert.deepEqual(cmd2.payload, { config: { enabled: false } });

      // The heartbeat ack does not deliver live-delivered commands a second time.
      const ack = await heartbeat(s);
      assert.deepEqual(ack.commands, []);
    } finally {
      await closeAndWaitOffline(s, 'dev-a1');
    }
  });

  test('middleware pushes (playlist, content, QR overlay) reach the player', { timeout: 60000 }, async () => {
    const s = open(URL, playerOptions(TOKEN_A1));
    const rec = new Recorder(s);
    try {
      await connected(s);
      await rec.next('playlist:update'); // the connect-time one
      await eventually('dev-a1 to be online', async () => (await presence('dev-a1')).json.online === true);

      // What displays.service.update sends: a Prisma playlist row with items and full contents.
      const res = await internalPost('/api/push/playlist', {
        deviceId: 'dev-a1',
        playlist: {
          id: 'pl-pushed',
          name: 'Pushed',
          description: null,
          isDefault: false,
          organizationId: 'org-a',
          createdAt: '2026-02-08T21:00:00.000Z',
          updatedAt: '2026-02-08T21:00:00.000Z',
          items: [
            {
              id: 'it-p',
              order: 0,
              duration: 5,
              createdAt: '2026-02-08T21:00:00.000Z',
              playlistId: 'pl-pushed',
              contentId: 'c-img',
              content: { id: 'c-img', name: 'Welcome', type: 'image', url: 'minio://bucket/welcome.png', mimeType: 'image/png', duration: 10 },
            },
          ],
        },
      });
      assert.equal(res.status, 201, res.text);
      assert.equal(res.json.success, true);
      const upd = await rec.next('playlist:update', (u) => u.playlist?.id === 'pl-pushed');
      assert.match(upd.timestamp, ISO_MS);
      assert.equal(upd.playlist.items[0].content.url, 'http://api.test/api/device-content/c-img/file');
      assert.equal(upd.playlist.items[0].duration, 5);
      assert.equal(upd.playlist.description, null, 'other properties are forwarded');

      const content = await internalPost('/api/push/content', {
        deviceId: 'dev-a1',
        content: { id: 'c-vid', name: 'Promo', type: 'video', url: 'https://cdn.test/promo.mp4', mimeType: 'video/mp4', duration: 30 },
      });
      assert.equal(content.status, 201, content.text);
      const push = await rec.next('command', (c) => c.type === 'push_content');
      assert.equal(push.payload.content.url, 'https://cdn.test/promo.mp4');
      assert.equal(push.payload.duration, 30, 'payload.duration defaults to 30');
      assert.match(push.timestamp, ISO_MS);

      const qr = await internalPost('/api/push/qr-overlay', {
        deviceId: 'dev-a1',
        qrOverlay: { enabled: true, url: 'https://vizora.test/new', position: 'top-left' },
      });
      assert.equal(qr.status, 201, qr.text);
      const overlay = await rec.next('qr-overlay:update');
      assert.equal(overlay.qrOverlay.url, 'https://vizora.test/new');
      assert.equal(s.connected, true);
    } finally {
      await closeAndWaitOffline(s, 'dev-a1');
    }
  });

  test('a command for an offline device is delivered when it comes back', { timeout: 60000 }, async () => {
    const res = await internalPost('/api/internal/command', { displayId: 'dev-a1', command: 'clear_cache' });
    assert.equal(res.status, 201, res.text);

    const s = open(URL, playerOptions(TOKEN_A1));
    const rec = new Recorder(s);
    try {
      await connected(s);
      // Delivered at connect as a `command` event, or in the first heartbeat ack's top-level
      // `commands` (which the players run): the heartbeat races the connect-time drain, so either
      // path may win, but exactly one of them delivers it, with the id the API returned.
      assert.equal(typeof res.json.commandId, 'string', res.text);
      const ack = await heartbeat(s);
      assert.equal(ack.success, true);
      const inAck = ack.commands.filter((c) => c.type === 'clear_cache');
      const cmd = inAck[0] ?? (await rec.next('command', (c) => c.type === 'clear_cache', 5000));
      assert.equal(cmd.id, res.json.commandId);
      const again = await heartbeat(s);
      assert.equal(again.commands.filter((c) => c.type === 'clear_cache').length, 0, 'drained once');
      const asEvents = rec.events.filter((e) => e.name === 'command' && e.args[0].type === 'clear_cache');
      assert.equal(inAck.length + asEvents.length, 1, 'delivered exactly once, by one path');
    } finally {
      s.close();
    }
  });
});
