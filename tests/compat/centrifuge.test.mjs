// Compatibility of Herald with the official Centrifuge JavaScript client
// (npm `centrifuge`), talking to a real `herald serve` process.
//
// Run with: cd tests/compat && npm install && npm test

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { newClient, nextEvent, sleep, startHerald, waitFor } from './lib/herald.mjs';

// Clients a test opens; each is disconnected after the test, pass or fail.
const clients = [];

function client(url, options) {
  const c = newClient(url, options);
  clients.push(c);
  return c;
}

afterEach(() => {
  while (clients.length > 0) {
    clients.pop().disconnect();
  }
});

describe('a herald node', () => {
  let herald;

  before(async () => {
    herald = await startHerald();
  });

  after(async () => {
    await herald?.stop();
  });

  /** Opens a client for `user` with a token from `herald token` and waits until it is connected. */
  async function connectedClient(user = '42', { tokenOptions = {}, options = {} } = {}) {
    const c = client(herald.url, { token: herald.token({ user, ...tokenOptions }), ...options });
    const connected = nextEvent(c, 'connected');
    c.connect();
    return { client: c, connected: await connected };
  }

  /** Subscribes `c` to `channel` and waits for the subscription to be confirmed. */
  async function subscribed(c, channel, options = {}) {
    const sub = c.newSubscription(channel, options);
    const done = nextEvent(sub, 'subscribed');
    sub.subscribe();
    await done;
    return sub;
  }

  test('a client connects with a token minted by `herald token --user 42`', async () => {
    const { client: c, connected } = await connectedClient('42');

    assert.equal(c.state, 'connected');
    assert.equal(connected.transport, 'websocket');
    assert.equal(typeof connected.client, 'string');
    assert.ok(connected.client.length > 0, 'the connected event carries a client id');
  });

  test('an API publication to `news` reaches a subscriber with exactly its data', async () => {
    const { client: c } = await connectedClient('42');
    const news = await subscribed(c, 'news');
    const data = { headline: 'Herald speaks Centrifuge', n: 1, tags: ['a', 'b'], nested: { ok: true } };

    const received = nextEvent(news, 'publication');
    const reply = await herald.api('publish', { channel: 'news', data });
    assert.deepEqual(reply, { result: {} }, `publish reply: ${JSON.stringify(reply)}`);

    const publication = await received;
    assert.equal(publication.channel, 'news');
    assert.deepEqual(publication.data, data);
  });

  test('in `chat:room` a subscriber may publish and another subscriber receives it', async () => {
    const { client: alice } = await connectedClient('42');
    const { client: bob } = await connectedClient('43');
    const aliceRoom = await subscribed(alice, 'chat:room');
    const bobRoom = await subscribed(bob, 'chat:room');

    const received = nextEvent(bobRoom, 'publication');
    await aliceRoom.publish({ text: 'hello bob' });

    const publication = await received;
    assert.equal(publication.channel, 'chat:room');
    assert.deepEqual(publication.data, { text: 'hello bob' });
  });

  test('a client may not publish into `news`, where only the API publishes (error 103)', async () => {
    const { client: c } = await connectedClient('42');
    // Subscribed, so only the namespace's `publish = "api"` can refuse it.
    await subscribed(c, 'news');

    await assert.rejects(c.publish('news', { text: 'not allowed' }), (err) => {
      assert.equal(err.code, 103, `publish error: ${JSON.stringify(err)}`);
      return true;
    });
  });

  test('subscribing to `private:doc` without a subscription token is refused with 103', async () => {
    const { client: c } = await connectedClient('42');
    const doc = c.newSubscription('private:doc');
    // centrifuge-js turns a permanent subscribe error into an 'unsubscribed'
    // event carrying the server's code, and fails ready().
    const unsubscribed = nextEvent(doc, 'unsubscribed');
    doc.subscribe();
    const ready = doc.ready().then(() => 'subscribed', (err) => err);

    const ctx = await unsubscribed;
    assert.equal(ctx.code, 103, `unsubscribed: ${JSON.stringify(ctx)}`);
    assert.equal(doc.state, 'unsubscribed');
    assert.notEqual(await ready, 'subscribed', 'ready() fails for a refused subscription');
  });

  test('with a subscription token from getToken, `private:doc` subscribes and receives publications', async () => {
    const { client: c } = await connectedClient('42');
    const requested = [];
    const doc = await subscribed(c, 'private:doc', {
      getToken: async (ctx) => {
        requested.push(ctx.channel);
        return herald.token({ user: '42', channel: 'private:doc' });
      },
    });
    assert.deepEqual(requested, ['private:doc'], 'getToken was asked for the channel token');

    const received = nextEvent(doc, 'publication');
    const reply = await herald.api('publish', { channel: 'private:doc', data: { page: 1 } });
    assert.ok('result' in reply, `publish reply: ${JSON.stringify(reply)}`);
    assert.deepEqual((await received).data, { page: 1 });
  });

  test('a token refreshed with new info changes what the connection\'s publications carry', async () => {
    const { client: watcher } = await connectedClient('53');
    const room = await subscribed(watcher, 'chat:renamed');
    const names = [];
    room.on('publication', (ctx) => names.push(ctx.info?.connInfo?.name));
    let refreshed = false;
    const { client: c } = await connectedClient('52', {
      tokenOptions: { ttl: '2s', info: { name: 'before' } },
      options: {
        getToken: async () => {
          refreshed = true;
          return herald.token({ user: '52', ttl: '60s', info: { name: 'after' } });
        },
      },
    });
    const own = await subscribed(c, 'chat:renamed');
    await own.publish({ n: 0 });
    await waitFor(() => names.length >= 1, { message: 'the first publication' });
    assert.equal(names[0], 'before');

    await waitFor(() => refreshed, { timeout: 4000, message: 'getToken to be called for a refresh' });
    // The refresh reaches the server soon after getToken answers: publish
    // until a publication carries the new name (the old one until then).
    for (let n = 1; !names.includes('after'); n += 1) {
      assert.ok(n < 40, `the new info never showed: ${JSON.stringify(names)}`);
      await own.publish({ n });
      await waitFor(() => names.length > n, { message: `publication ${n}` });
    }
    const firstAfter = names.indexOf('after');
    assert.ok(names.slice(0, firstAfter).every((name) => name === 'before'), JSON.stringify(names));
    assert.ok(names.slice(firstAfter).every((name) => name === 'after'), `never back to the old name: ${JSON.stringify(names)}`);
  });

  test('a connection refreshes its 2s token through getToken and outlives the first token', async () => {
    let refreshes = 0;
    const events = [];
    const c = client(herald.url, {
      token: herald.token({ user: '42', ttl: '2s' }),
      getToken: async () => {
        refreshes += 1;
        return herald.token({ user: '42', ttl: '2s' });
      },
    });
    for (const event of ['connecting', 'connected', 'disconnected']) {
      c.on(event, (ctx) => events.push({ event, code: ctx.code, client: ctx.client }));
    }
    const connected = nextEvent(c, 'connected');
    c.connect();
    await connected;
    const connectedAt = Date.now();
    const news = await subscribed(c, 'news');

    await waitFor(() => refreshes >= 1, { timeout: 4000, message: 'getToken to be called for a refresh' });
    // The first token expired at most 2 s after connect, and herald closes an
    // expired connection 1 s later (expired_close_delay): 4 s is past both.
    await sleep(Math.max(0, connectedAt + 4000 - Date.now()));

    assert.equal(c.state, 'connected');
    const received = nextEvent(news, 'publication');
    await herald.api('publish', { channel: 'news', data: { still: 'here' } });
    assert.deepEqual((await received).data, { still: 'here' });
    assert.deepEqual(
      events.map((e) => e.event),
      ['connecting', 'connected'],
      `one connection, never dropped: ${JSON.stringify(events)}`,
    );
  });

  test('a connection that cannot refresh its 2s token is closed by herald with 3005', async () => {
    // getToken never answers, so the client never sends a refresh command.
    const c = client(herald.url, {
      token: herald.token({ user: '42', ttl: '2s' }),
      getToken: () => new Promise(() => {}),
    });
    const connected = nextEvent(c, 'connected');
    c.connect();
    await connected;
    const connectedAt = Date.now();

    const ctx = await nextEvent(c, 'connecting', { timeout: 6000 });
    assert.equal(ctx.code, 3005, `connecting after expiry: ${JSON.stringify(ctx)}`);
    // The token lives at least 1 s (whole-second exp) and the grace is 1 s.
    assert.ok(Date.now() - connectedAt >= 1500, 'not closed before the token expired plus grace');
  });

  test('a token minted with `--subscribe news` subscribes the connection to news on the server side', async () => {
    const c = client(herald.url, { token: herald.token({ user: '42', subscribe: ['news'] }) });
    const serverSubscribed = nextEvent(c, 'subscribed', { filter: (ctx) => ctx.channel === 'news' });
    const connected = nextEvent(c, 'connected');
    c.connect();
    await connected;
    await serverSubscribed;

    const received = nextEvent(c, 'publication', { filter: (ctx) => ctx.channel === 'news' });
    await herald.api('publish', { channel: 'news', data: { server: 'side' } });
    assert.deepEqual((await received).data, { server: 'side' });
  });

  test('POST /api/disconnect ends the user\'s connection with 3503 and no reconnect', async () => {
    const { client: c } = await connectedClient('42');
    const disconnected = nextEvent(c, 'disconnected');

    const reply = await herald.api('disconnect', { user: '42' });
    assert.ok('result' in reply, `disconnect reply: ${JSON.stringify(reply)}`);

    const ctx = await disconnected;
    assert.equal(ctx.code, 3503, `disconnected: ${JSON.stringify(ctx)}`);
    assert.equal(c.state, 'disconnected');
  });

  test('POST /api/subscribe subscribes a connected user to news on the server side, with its data', async () => {
    const { client: c } = await connectedClient('44');
    const serverSubscribed = nextEvent(c, 'subscribed', { filter: (ctx) => ctx.channel === 'news' });

    const reply = await herald.api('subscribe', { user: '44', channel: 'news', data: { why: 'you follow news' } });
    assert.ok('result' in reply, `subscribe reply: ${JSON.stringify(reply)}`);
    const ctx = await serverSubscribed;
    assert.deepEqual(ctx.data, { why: 'you follow news' }, `the subscribed event: ${JSON.stringify(ctx)}`);

    const received = nextEvent(c, 'publication', { filter: (ctx) => ctx.channel === 'news' });
    await herald.api('publish', { channel: 'news', data: { via: 'api subscribe' } });
    assert.deepEqual((await received).data, { via: 'api subscribe' });
  });
});

describe('shutting herald down', () => {
  test('SIGTERM exits with code 0 and tells connected clients to reconnect (3001)', async () => {
    const herald = await startHerald();
    try {
      const c = client(herald.url, { token: herald.token({ user: '42' }) });
      const connected = nextEvent(c, 'connected');
      c.connect();
      await connected;
      const reconnecting = nextEvent(c, 'connecting');

      const exit = await herald.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, `herald output:\n${herald.output()}`);

      const ctx = await reconnecting;
      assert.equal(ctx.code, 3001, `connecting after shutdown: ${JSON.stringify(ctx)}`);
    } finally {
      await herald.stop();
    }
  });
});
