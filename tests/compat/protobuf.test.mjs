// Herald's Protobuf encoding (the `centrifuge-protobuf` WebSocket
// subprotocol), driven by centrifuge-js's own Protobuf build
// (`centrifuge/build/protobuf`) against a real `herald serve`: publications,
// presence, history, recovery after a cut connection, and a Protobuf
// client and a JSON client meeting in one channel.
//
// Run with: cd tests/compat && npm test

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

import { dropTransport, newClient, nextEvent, reconnectGate, startHerald, subscribed, waitFor } from './lib/herald.mjs';

const config = {
  channel: {
    namespaces: {
      feed: {
        subscribe: 'authenticated',
        publish: 'subscribers',
        history_size: 50,
        history_ttl: '5m',
        force_recovery: true,
        presence: true,
        join_leave: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
      },
    },
  },
};

const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

const opened = [];

afterEach(() => {
  while (opened.length > 0) opened.pop().disconnect();
});

describe('centrifuge-js Protobuf build on a herald node', () => {
  let herald;

  before(async () => {
    herald = await startHerald(config);
  });

  after(async () => {
    await herald?.stop();
  });

  function protobufClient(user, options = {}) {
    const c = new ProtobufCentrifuge(herald.url, { token: herald.token({ user }), websocket: WebSocket, ...options });
    opened.push(c);
    return c;
  }

  async function connected(c) {
    const done = nextEvent(c, 'connected');
    c.connect();
    return done;
  }

  test('connects over the centrifuge-protobuf subprotocol and receives what the API publishes', async () => {
    const c = protobufClient('ann');
    const ctx = await connected(c);
    assert.equal(ctx.transport, 'websocket');
    assert.equal(c._transport._transport.protocol, 'centrifuge-protobuf', 'the server chose the subprotocol');

    const { sub } = await subscribed(c, 'feed:pb');
    const received = nextEvent(sub, 'publication');
    await herald.api('publish', { channel: 'feed:pb', data: { score: [2, 1], text: 'ünïcode' } });
    const publication = await received;
    assert.ok(publication.data instanceof Uint8Array, 'Protobuf clients get bytes');
    assert.deepEqual(decode(publication.data), { score: [2, 1], text: 'ünïcode' });
    assert.equal(typeof publication.offset, 'number');
  });

  test('a Protobuf client and a JSON client meet in one channel, both ways', async () => {
    const channel = 'feed:mixed';
    const pb = protobufClient('pb');
    await connected(pb);
    const json = newClient(herald.url, { token: herald.token({ user: 'js' }) });
    opened.push(json);
    await connected(json);
    const { sub: pbSub } = await subscribed(pb, channel, { joinLeave: true });
    const { sub: jsonSub } = await subscribed(json, channel);

    const toJson = nextEvent(jsonSub, 'publication');
    const toPb = nextEvent(pbSub, 'publication');
    await pbSub.publish(encode({ from: 'protobuf' }));
    assert.deepEqual((await toJson).data, { from: 'protobuf' });
    assert.deepEqual(decode((await toPb).data), { from: 'protobuf' });

    const back = nextEvent(pbSub, 'publication');
    await jsonSub.publish({ from: 'json' });
    assert.deepEqual(decode((await back).data), { from: 'json' });

    const present = await pb.presence(channel);
    assert.deepEqual(Object.values(present.clients).map((info) => info.user).sort(), ['js', 'pb']);
    const stats = await pb.presenceStats(channel);
    assert.deepEqual(stats, { numClients: 2, numUsers: 2 });
    const history = await pbSub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => decode(p.data)), [{ from: 'protobuf' }, { from: 'json' }]);

    const left = nextEvent(pbSub, 'leave');
    json.disconnect();
    assert.equal((await left).info.user, 'js');
  });

  test('a Protobuf client whose connection is cut recovers what it missed', async () => {
    const channel = 'feed:pb-cut';
    const gate = reconnectGate();
    const c = protobufClient('cy', { getData: gate.getData, minReconnectDelay: 50, maxReconnectDelay: 100 });
    await connected(c);
    const { sub } = await subscribed(c, channel);
    const received = [];
    sub.on('publication', (ctx) => received.push(decode(ctx.data).n));
    await herald.api('publish', { channel, data: { n: 1 } });
    await waitFor(() => received.length === 1, { message: 'the first publication' });

    gate.hold();
    const connecting = nextEvent(c, 'connecting');
    dropTransport(c);
    await connecting;
    for (const n of [2, 3, 4]) await herald.api('publish', { channel, data: { n } });
    const resubscribed = nextEvent(sub, 'subscribed');
    gate.release();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));
    await herald.api('publish', { channel, data: { n: 5 } });
    await waitFor(() => received.length === 5, { message: `five publications, got ${received}` });
    assert.deepEqual(received, [1, 2, 3, 4, 5]);
  });

  test('data a Protobuf client publishes must be JSON: other bytes end its connection as a bad request', async () => {
    const channel = 'feed:pb-binary';
    const watcher = newClient(herald.url, { token: herald.token({ user: 'watcher' }) });
    opened.push(watcher);
    await connected(watcher);
    const { sub: watching } = await subscribed(watcher, channel);
    const seen = [];
    watching.on('publication', (ctx) => seen.push(ctx.data));

    const c = protobufClient('bin');
    await connected(c);
    const { sub } = await subscribed(c, channel);
    const disconnected = nextEvent(c, 'disconnected');
    sub.publish(new Uint8Array([0, 159, 146, 150])).catch(() => {});
    const ctx = await disconnected;
    assert.equal(ctx.code, 3501, JSON.stringify(ctx));

    await herald.api('publish', { channel, data: { after: true } });
    await waitFor(() => seen.length === 1, { message: 'the JSON subscriber still reads its channel' });
    assert.deepEqual(seen, [{ after: true }]);
  });
});
