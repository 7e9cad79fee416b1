// Herald's Centrifuge transports besides the WebSocket, driven by real
// clients: centrifuge-js (npm `centrifuge`) on its HTTP-streaming and SSE
// fallbacks, with commands posted to /emulation, and a plain EventSource
// (npm `eventsource`) on the uni-directional SSE endpoint.
//
// Two nodes share one Redis (started by the tests on a free port): a client
// streams from node A and posts its commands to node B, as behind a load
// balancer without sticky sessions. Run with: cd tests/compat && npm test

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Centrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import { EventSource } from 'eventsource';

import { defaultConfig, newClient, nextEvent, startHerald, subscribed, waitFor } from './lib/herald.mjs';
import { backplane } from './lib/nats.mjs';

const config = (engine) => {
  const { client, api } = defaultConfig();
  return {
    engine,
    client,
    api,
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
        },
      },
    },
  };
};

// Clients and event sources a test opens; each is closed after the test.
const opened = [];

afterEach(() => {
  while (opened.length > 0) {
    const c = opened.pop();
    if (c instanceof EventSource) c.close();
    else c.disconnect();
  }
});

const TRANSPORTS = ['http_stream', 'sse'];

describe('centrifuge-js on HTTP-streaming and SSE, two nodes over Redis', () => {
  let shared;
  let nodes = [];

  before(async () => {
    shared = await backplane('redis', `herald-transports-${process.pid}`);
    nodes = await Promise.all([1, 2].map(() => startHerald(config(shared.engine))));
  });

  after(async () => {
    await Promise.allSettled(nodes.map((node) => node.stop()));
    await shared?.stop();
  });

  /**
   * A centrifuge-js client for `user` that may use only `transport`, streaming
   * from `streamNode` and posting its commands to `commandNode`.
   */
  function fallbackClient(transport, user, { streamNode = nodes[0], commandNode = nodes[1], protobuf = false, options = {} } = {}) {
    const base = (node) => `http://127.0.0.1:${node.port}`;
    const Client = protobuf ? ProtobufCentrifuge : Centrifuge;
    const c = new Client([{ transport, endpoint: `${base(streamNode)}/connection/${transport}` }], {
      token: streamNode.token({ user }),
      emulationEndpoint: `${base(commandNode)}/emulation`,
      fetch,
      readableStream: ReadableStream,
      eventsource: EventSource,
      minReconnectDelay: 50,
      maxReconnectDelay: 200,
      ...options,
    });
    opened.push(c);
    return c;
  }

  async function connected(c) {
    const done = nextEvent(c, 'connected');
    c.connect();
    return done;
  }

  for (const transport of TRANSPORTS) {
    test(`over ${transport} a client connects, subscribes through the other node, and receives and publishes`, async () => {
      const c = fallbackClient(transport, 'ann');
      const ctx = await connected(c);
      assert.equal(ctx.transport, transport);

      const { sub } = await subscribed(c, `feed:${transport}-pub`);
      const fromApi = nextEvent(sub, 'publication');
      await nodes[1].api('publish', { channel: `feed:${transport}-pub`, data: { n: 1 } });
      assert.deepEqual((await fromApi).data, { n: 1 });

      const own = nextEvent(sub, 'publication');
      await sub.publish({ n: 2, text: '<script>alert(1)</script>' });
      assert.deepEqual((await own).data, { n: 2, text: '<script>alert(1)</script>' });

      const rpc = await c.presence(`feed:${transport}-pub`).catch((e) => e);
      assert.deepEqual(Object.values(rpc.clients).map((info) => info.user), ['ann']);
    });

    test(`over ${transport} join and leave reach a WebSocket client on the other node`, async () => {
      const channel = `feed:${transport}-room`;
      const watcher = newClient(nodes[1].url, { token: nodes[1].token({ user: 'watcher' }) });
      opened.push(watcher);
      await connected(watcher);
      const { sub: watching } = await subscribed(watcher, channel, { joinLeave: true });

      const c = fallbackClient(transport, 'bob');
      await connected(c);
      const joined = nextEvent(watching, 'join');
      const { sub } = await subscribed(c, channel);
      assert.equal((await joined).info.user, 'bob');

      const left = nextEvent(watching, 'leave');
      sub.unsubscribe();
      assert.equal((await left).info.user, 'bob');
    });

    test(`over ${transport} a client whose stream is cut recovers what it missed`, async () => {
      const channel = `feed:${transport}-cut`;
      const c = fallbackClient(transport, 'cy');
      await connected(c);
      const { sub } = await subscribed(c, channel);
      const received = [];
      sub.on('publication', (ctx) => received.push(ctx.data.n));
      await nodes[1].api('publish', { channel, data: { n: 1 } });
      await waitFor(() => received.length === 1, { message: 'the first publication' });

      // Cut the stream: the client reconnects by itself, after a delay.
      const reconnecting = nextEvent(c, 'connecting');
      c._transport.close();
      await reconnecting;
      for (const n of [2, 3, 4]) await nodes[1].api('publish', { channel, data: { n } });

      const resubscribed = await nextEvent(sub, 'subscribed');
      assert.equal(resubscribed.recovered, true, JSON.stringify(resubscribed));
      await nodes[1].api('publish', { channel, data: { n: 5 } });
      await waitFor(() => received.length === 5, { message: `all five publications, got ${received}` });
      assert.deepEqual(received, [1, 2, 3, 4, 5], 'each once, in order');
    });
  }

  test('the Protobuf build over http_stream publishes, reads presence and recovers a cut stream, through the other node', async () => {
    const channel = 'feed:pb-stream';
    const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
    const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));
    const c = fallbackClient('http_stream', 'pat', { protobuf: true });
    assert.equal((await connected(c)).transport, 'http_stream');
    const { sub } = await subscribed(c, channel);
    const received = [];
    sub.on('publication', (ctx) => received.push(decode(ctx.data).n));

    await sub.publish(encode({ n: 1 }));
    await nodes[1].api('publish', { channel, data: { n: 2 } });
    await waitFor(() => received.length === 2, { message: `two publications, got ${received}` });
    const present = await c.presence(channel);
    assert.deepEqual(Object.values(present.clients).map((info) => info.user), ['pat']);

    const reconnecting = nextEvent(c, 'connecting');
    c._transport.close();
    await reconnecting;
    for (const n of [3, 4]) await nodes[1].api('publish', { channel, data: { n } });
    const resubscribed = await nextEvent(sub, 'subscribed');
    assert.equal(resubscribed.recovered, true, JSON.stringify(resubscribed));
    await waitFor(() => received.length === 4, { message: `four publications, got ${received}` });
    assert.deepEqual(received, [1, 2, 3, 4]);
  });

  test('a plain EventSource on the uni-directional SSE endpoint gets its token channels and recovers by naming its position', async () => {
    const channel = 'feed:uni-sse';
    const token = nodes[0].token({ user: 'dee', subscribe: [channel] });
    const url = (request) =>
      `http://127.0.0.1:${nodes[0].port}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify(request))}`;

    const messages = [];
    const source = new EventSource(url({ token }));
    opened.push(source);
    source.onmessage = (event) => messages.push(JSON.parse(event.data));
    await waitFor(() => messages.some((m) => m.connect), { message: 'the connect push' });
    const sub = messages.find((m) => m.connect).connect.subs[channel];
    assert.equal(sub.recoverable, true, JSON.stringify(sub));

    await nodes[1].api('publish', { channel, data: { n: 1 } });
    await waitFor(() => messages.some((m) => m.pub), { message: 'a publication push' });
    const first = messages.find((m) => m.pub);
    assert.equal(first.channel, channel);
    assert.deepEqual(first.pub.data, { n: 1 });
    source.close();

    for (const n of [2, 3]) await nodes[1].api('publish', { channel, data: { n } });
    const again = [];
    const resumed = new EventSource(url({ token, subs: { [channel]: { recover: true, epoch: sub.epoch, offset: first.pub.offset } } }));
    opened.push(resumed);
    resumed.onmessage = (event) => again.push(JSON.parse(event.data));
    await waitFor(() => again.some((m) => m.connect), { message: 'the connect push after reconnecting' });
    const recovered = again.find((m) => m.connect).connect.subs[channel];
    assert.equal(recovered.recovered, true, JSON.stringify(recovered));
    assert.deepEqual(recovered.publications.map((p) => p.data.n), [2, 3]);
  });
});
