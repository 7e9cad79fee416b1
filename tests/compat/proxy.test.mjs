// The proxy with real parts: the example backend (examples/proxy-backend,
// a stateless node server written against Centrifugo's proxy format),
// two herald nodes sharing one Redis, and the official centrifuge-js
// client connecting without a token, with the browser's session cookie.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import WebSocket from 'ws';

import { createBackend, signSession } from '../../examples/proxy-backend/server.mjs';
import { defaultConfig, newClient, nextEvent, startHerald, subscribed, waitFor } from './lib/herald.mjs';
import { freePort, startRedis } from './lib/redis.mjs';

const SECRET = 'example-session-secret';

/** A WebSocket that sends `cookie` with its handshake, as a browser would. */
function withCookie(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
    }
  };
}

function nodeConfig(redisUrl, backendUrl, shared) {
  const proxy = (event) => ({ endpoint: `${backendUrl}/centrifugo/${event}`, timeout: '1s', http_headers: ['Cookie'] });
  return {
    engine: { type: 'redis', address: redisUrl, prefix: `herald-proxy-${process.pid}` },
    client: { ...shared.client, connect_proxy: 'connect', rpc_proxy: 'rpc' },
    api: shared.api,
    proxies: { connect: proxy('connect'), subscribe: proxy('subscribe'), publish: proxy('publish'), rpc: proxy('rpc') },
    channel: {
      namespaces: {
        chat: { subscribe_proxy: 'subscribe', publish_proxy: 'publish', history_size: 10, history_ttl: '5m' },
        personal: { subscribe: 'token' },
      },
    },
  };
}

describe('the proxy with centrifuge-js, the example backend and two nodes over Redis', () => {
  let redis;
  let backend;
  let backendPort;
  let nodeA;
  let nodeB;
  const clients = [];

  async function startBackend() {
    backend = createBackend({ secret: SECRET });
    await new Promise((resolve) => backend.listen(backendPort, '127.0.0.1', resolve));
  }

  async function killBackend() {
    backend.closeAllConnections();
    await new Promise((resolve) => backend.close(resolve));
  }

  function client(node, user) {
    const cookie = user ? `session=${signSession(user, SECRET)}` : null;
    const c = newClient(node.url, { websocket: withCookie(cookie) });
    clients.push(c);
    return c;
  }

  before(async () => {
    redis = await startRedis();
    backendPort = await freePort();
    await startBackend();
    const shared = defaultConfig();
    const backendUrl = `http://127.0.0.1:${backendPort}`;
    nodeA = await startHerald(nodeConfig(redis.url, backendUrl, shared));
    nodeB = await startHerald(nodeConfig(redis.url, backendUrl, shared));
  });

  afterEach(() => {
    while (clients.length > 0) clients.pop().disconnect();
  });

  after(async () => {
    await Promise.allSettled([nodeA?.stop(), nodeB?.stop()]);
    await killBackend().catch(() => {});
    await redis?.stop();
  });

  test('a browser session cookie is enough to connect: the backend says who it is', async () => {
    const ada = client(nodeA, 'ada');
    const connected = nextEvent(ada, 'connected');
    const personal = nextEvent(ada, 'subscribed', { filter: (s) => s.channel === 'personal:ada' });
    ada.connect();
    const ctx = await connected;
    assert.deepEqual(ctx.data, { welcome: 'hello, ada' });
    assert.equal((await personal).channel, 'personal:ada', 'the server-side channel from the connect result');
  });

  test('without a valid cookie the backend closes the connection with its code', async () => {
    const stranger = client(nodeA, null);
    const disconnected = nextEvent(stranger, 'disconnected');
    stranger.connect();
    const ctx = await disconnected;
    assert.equal(ctx.code, 4501);
    assert.equal(ctx.reason, 'sign in first');
  });

  test('a moderated message reaches subscribers on both nodes rewritten, and the sender is in its info', async () => {
    const ada = client(nodeA, 'ada');
    const bob = client(nodeB, 'bob');
    ada.connect();
    bob.connect();
    const { sub: onA } = await subscribed(ada, 'chat:lobby');
    const { sub: onB } = await subscribed(bob, 'chat:lobby');
    const seenOnB = nextEvent(onB, 'publication');
    const seenOnA = nextEvent(onA, 'publication');
    await onA.publish({ text: 'what the heck' });
    for (const publication of [await seenOnA, await seenOnB]) {
      assert.deepEqual(publication.data, { text: 'what the ****', moderated: true });
      assert.equal(publication.info.user, 'ada');
    }
    await assert.rejects(onA.publish({ text: 'x'.repeat(281) }), (error) => error.code === 1400);
  });

  test('the backend refuses a subscription with its own code', async () => {
    const bob = client(nodeB, 'bob');
    bob.connect();
    const sub = bob.newSubscription('chat:admins');
    const refused = nextEvent(sub, 'unsubscribed');
    sub.subscribe();
    const ctx = await refused;
    assert.equal(ctx.code, 1403);
    assert.equal(ctx.reason, 'admins only');
  });

  test('an RPC is answered by the backend; while it is down calls fail temporarily, then work again', async () => {
    const ada = client(nodeA, 'ada');
    ada.connect();
    await nextEvent(ada, 'connected');
    const rolled = await ada.rpc('roll', {});
    assert.ok(rolled.data.die >= 1 && rolled.data.die <= 6, JSON.stringify(rolled));
    await assert.rejects(ada.rpc('nope', {}), (error) => error.code === 1404);

    await killBackend();
    await assert.rejects(ada.rpc('time', {}), (error) => error.code === 100 && error.temporary === true);
    await startBackend();
    await waitFor(async () => (await ada.rpc('time', {}).then(() => true, () => false)), {
      message: 'the RPC works again once the backend is back',
    });
  });
});
