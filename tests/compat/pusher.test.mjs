// Compatibility of Herald with the Pusher Channels ecosystem, protocol 7:
// the browser client pusher-js (its Node build), the `pusher` server SDK for
// the HTTP API, auth signatures and webhooks, and Laravel Echo on top of
// pusher-js. Every package is used unchanged, configured as an application
// would configure it for a self-hosted Pusher-compatible server.
//
// Run with: cd tests/compat && npm install && node --test pusher.test.mjs

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import WebSocket from 'ws';

import { newClient, nextEvent, subscribed } from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';
import {
  json,
  nextPusherEvent,
  refusal,
  startHeraldWithPusher,
  uniqueName,
  until,
  within,
} from './lib/pusher.mjs';

/** The user ids of a presence channel's pusher-js members object, sorted. */
function memberIds(members) {
  const ids = [];
  members.each((member) => ids.push(member.id));
  return ids.sort();
}

/** Pusher client events and webhooks may carry data as sent or as its JSON text; this is the value either way. */
function dataValue(data) {
  if (typeof data !== 'string') {
    return data;
  }
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

describe('a herald node speaking Pusher protocol 7', () => {
  let env;
  // Raw sockets and centrifuge-js clients a test opens; closed after it.
  const sockets = [];
  const centrifugeClients = [];

  before(async () => {
    env = await startHeraldWithPusher();
  });

  after(async () => {
    await env?.stop();
  });

  afterEach(() => {
    env.closeClients();
    while (sockets.length > 0) {
      sockets.pop().terminate();
    }
    while (centrifugeClients.length > 0) {
      centrifugeClients.pop().disconnect();
    }
  });

  /**
   * A plain WebSocket on herald's Pusher endpoint, as pusher-js would open
   * it, reading the frames herald sends one after the other.
   */
  function rawPusherSocket({ key = env.app.key } = {}) {
    const url = `ws://127.0.0.1:${env.herald.port}/app/${key}?protocol=7&client=js&version=8.6.0&flash=false`;
    const socket = new WebSocket(url);
    sockets.push(socket);
    const frames = [];
    let read = 0;
    let closed = null;
    socket.on('message', (raw) => frames.push(JSON.parse(raw.toString())));
    socket.on('close', (code, reason) => {
      closed = { code, reason: reason.toString() };
    });
    socket.on('error', () => {});
    return {
      frames,
      closed: () => closed,
      async next({ timeout = 5000 } = {}) {
        const frame = await until(() => frames[read], {
          timeout,
          what: () => `frame #${read + 1} on ${url} (closed: ${JSON.stringify(closed)})`,
        });
        read += 1;
        return frame;
      },
      send(event, data) {
        socket.send(JSON.stringify({ event, data }));
      },
    };
  }

  /** Connects a raw socket and resolves with it and the socket id from its handshake. */
  async function rawConnected() {
    const raw = rawPusherSocket();
    const established = await raw.next();
    assert.equal(established.event, 'pusher:connection_established', JSON.stringify(established));
    return { raw, socketId: JSON.parse(established.data).socket_id };
  }

  describe('the connection', () => {
    test('opens with pusher:connection_established: data is JSON text with a socket id and the configured activity_timeout', async () => {
      const raw = rawPusherSocket();
      const established = await raw.next();

      assert.equal(established.event, 'pusher:connection_established');
      assert.equal(typeof established.data, 'string', `the Pusher protocol sends data as a JSON string: ${JSON.stringify(established)}`);
      const data = JSON.parse(established.data);
      assert.match(data.socket_id, /^\d+\.\d+$/, 'the socket id has the form the pusher SDK validates');
      assert.equal(data.activity_timeout, 120, 'activity_timeout = "120s" is sent in seconds');
    });

    test('answers pusher:ping with pusher:pong', async () => {
      const { raw } = await rawConnected();
      raw.send('pusher:ping', {});
      const pong = await raw.next();
      assert.equal(pong.event, 'pusher:pong', JSON.stringify(pong));
    });

    test('pusher-js connects with the app key and gets distinct socket ids', async () => {
      const one = await env.client();
      const two = await env.client();

      assert.equal(one.state, 'connected');
      assert.match(one.socketId, /^\d+\.\d+$/);
      assert.notEqual(one.socketId, two.socketId);
    });

    test('pusher-js with an unknown app key is refused with 4001 and does not retry', async () => {
      const c = await env.client({ key: 'no-such-key', connect: false });

      await c.reach('disconnected', { timeout: 10000 });
      assert.ok(c.errorCodes().includes(4001), `error 4001 "Application does not exist": ${JSON.stringify(c.errors)}`);
      assert.ok(!c.states.includes('connected'), `never connected: ${JSON.stringify(c.states)}`);
    });
  });

  describe('public channels and the HTTP API', () => {
    test('a subscriber receives an SDK trigger; JSON data arrives parsed once, plain text as sent', async () => {
      const channel = uniqueName('public');
      const c = await env.client();
      await c.subscribe(channel);
      const received = c.record(channel, 'news-flash');
      const sdk = env.sdk();

      const reply = await json(sdk.trigger(channel, 'news-flash', { headline: 'herald speaks pusher', n: 1, tags: ['a'] }));
      assert.equal(typeof reply, 'object', `trigger reply: ${JSON.stringify(reply)}`);
      await json(sdk.trigger(channel, 'news-flash', 'plain words, not JSON'));
      await json(sdk.trigger(channel, 'news-flash', '[1,2,3]'));
      // What PHP's SDK sends for a string (it JSON-encodes every payload):
      // the client gets the string back, not what the string spells.
      await json(sdk.trigger(channel, 'news-flash', JSON.stringify('42')));
      await json(sdk.trigger(channel, 'news-flash', JSON.stringify(JSON.stringify({ a: 1 }))));

      await until(() => received.length >= 5, { what: () => `5 events, got ${JSON.stringify(received)}` });
      assert.deepEqual(
        received.map((r) => r.data),
        [
          { headline: 'herald speaks pusher', n: 1, tags: ['a'] },
          'plain words, not JSON',
          [1, 2, 3],
          '42',
          '{"a":1}',
        ],
      );
    });

    test('one trigger to several channels reaches each; triggerBatch delivers every event to its channel in order', async () => {
      const [left, right] = [uniqueName('multi'), uniqueName('multi')];
      const c = await env.client();
      await c.subscribe(left);
      await c.subscribe(right);
      const sdk = env.sdk();

      await json(sdk.trigger([left, right], 'both', { to: 'both' }));
      await json(
        sdk.triggerBatch([
          { channel: left, name: 'first', data: { i: 1 } },
          { channel: right, name: 'second', data: { i: 2 } },
          { channel: left, name: 'third', data: 'text' },
        ]),
      );

      const events = (channel, n) =>
        until(
          () => {
            const got = c.frames.filter((f) => f.channel === channel && !f.event.startsWith('pusher'));
            return got.length >= n ? got.map((f) => [f.event, f.data]) : undefined;
          },
          { what: () => `${n} events on ${channel}: ${JSON.stringify(c.frames)}` },
        );
      assert.deepEqual(await events(left, 3), [
        ['both', { to: 'both' }],
        ['first', { i: 1 }],
        ['third', 'text'],
      ]);
      assert.deepEqual(await events(right, 2), [
        ['both', { to: 'both' }],
        ['second', { i: 2 }],
      ]);
    });

    test('a trigger with socket_id skips that connection, in /events and in /batch_events', async () => {
      const channel = uniqueName('exclude');
      const alice = await env.client({ label: 'alice' });
      const bob = await env.client({ label: 'bob' });
      await alice.subscribe(channel);
      await bob.subscribe(channel);
      const toAlice = alice.record(channel, 'evt');
      const toBob = bob.record(channel, 'evt');
      const sdk = env.sdk();

      await json(sdk.trigger(channel, 'evt', { n: 1 }, { socket_id: alice.socketId }));
      await json(sdk.triggerBatch([{ channel, name: 'evt', data: { n: 2 }, socket_id: bob.socketId }]));
      await json(sdk.trigger(channel, 'evt', { n: 3 }));

      await until(() => toAlice.length >= 2 && toBob.length >= 2, {
        what: () => `alice ${JSON.stringify(toAlice)}, bob ${JSON.stringify(toBob)}`,
      });
      assert.deepEqual(toAlice.map((r) => r.data.n), [2, 3], 'alice was excluded from n=1');
      assert.deepEqual(toBob.map((r) => r.data.n), [1, 3], 'bob was excluded from n=2');
    });

    test('an event whose data exceeds max_event_size (10240 bytes) is refused and not delivered', async () => {
      const channel = uniqueName('big');
      const c = await env.client();
      await c.subscribe(channel);
      const received = c.record(channel, 'evt');
      const sdk = env.sdk();

      const refused = await refusal(sdk.trigger(channel, 'evt', 'x'.repeat(10241)));
      assert.ok(refused.status === 413 || refused.status === 400, `status ${refused.status}: ${refused.body}`);

      await json(sdk.trigger(channel, 'evt', 'x'.repeat(10000)));
      await until(() => received.length >= 1);
      assert.equal(received.length, 1);
      assert.equal(received[0].data.length, 10000, 'only the event within the limit arrived');
    });

    test('a request with a bad signature is refused with 401', async () => {
      const impostor = env.sdk({ secret: 'not-the-secret' });

      const refused = await refusal(impostor.trigger(uniqueName('public'), 'evt', {}));
      assert.equal(refused.status, 401, `body: ${refused.body}`);
    });
  });

  describe('private channels and the auth endpoint', () => {
    test('pusher-js subscribes through the auth endpoint and receives SDK triggers', async () => {
      const channel = uniqueName('private-doc');
      const c = await env.client({ user: 'p1' });
      const asked = env.auth.requests.length;
      await c.subscribe(channel);

      const authRequest = env.auth.requests.slice(asked).find((r) => r.params.channel_name === channel);
      assert.ok(authRequest, 'pusher-js asked the auth endpoint');
      assert.equal(authRequest.params.socket_id, c.socketId);
      assert.equal(authRequest.status, 200);

      const received = c.record(channel, 'page');
      await json(env.sdk().trigger(channel, 'page', { page: 1 }));
      await until(() => received.length === 1);
      assert.deepEqual(received[0].data, { page: 1 });
    });

    test('an auth endpoint answering 403 gives pusher:subscription_error with status 403', async () => {
      const channel = uniqueName('private-denied');
      const c = await env.client({ user: 'p2', authMode: 'deny' });

      const outcome = await c.subscription(channel);
      assert.equal(outcome.ok, false);
      assert.equal(outcome.via, 'pusher:subscription_error');
      assert.equal(outcome.data.status, 403, JSON.stringify(outcome.data));
    });

    test('a signature made with the wrong secret is refused by herald and the channel stays silent', async () => {
      const channel = uniqueName('private-forged');
      const c = await env.client({ user: 'p3', authMode: 'forge' });
      const marker = uniqueName('marker');
      await c.subscribe(marker);

      const outcome = await c.subscription(channel);
      assert.equal(outcome.ok, false, 'herald refused the forged signature');
      assert.ok(
        ['pusher:subscription_error', 'pusher:error'].includes(outcome.via),
        `refused with ${outcome.via}: ${JSON.stringify(outcome.data)}`,
      );

      const sdk = env.sdk();
      await json(sdk.trigger(channel, 'secret', { leaked: true }));
      await json(sdk.trigger(marker, 'marker', {}));
      await c.frame((f) => f.channel === marker && f.event === 'marker');
      assert.deepEqual(c.framesOf('secret'), [], 'nothing published to the refused channel reached the client');
    });

    test('a signature for another socket id is refused; its rightful socket may use it', async () => {
      const thief = await rawConnected();
      const owner = await rawConnected();
      const channel = uniqueName('private-stolen');
      const { auth } = env.sdk().authorizeChannel(owner.socketId, channel);

      thief.raw.send('pusher:subscribe', { channel, auth });
      const refused = await thief.raw.next();
      assert.ok(
        ['pusher:subscription_error', 'pusher:error'].includes(refused.event),
        `the thief was refused: ${JSON.stringify(refused)}`,
      );

      owner.raw.send('pusher:subscribe', { channel, auth });
      const accepted = await owner.raw.next();
      assert.equal(accepted.event, 'pusher_internal:subscription_succeeded', JSON.stringify(accepted));
      assert.equal(accepted.channel, channel);
    });

    test('a private channel without any auth is refused', async () => {
      const { raw } = await rawConnected();
      raw.send('pusher:subscribe', { channel: uniqueName('private-open') });
      const refused = await raw.next();
      assert.ok(['pusher:subscription_error', 'pusher:error'].includes(refused.event), JSON.stringify(refused));
    });

    test('private-encrypted-: pusher-js decrypts an SDK trigger with the shared secret from the auth endpoint', async () => {
      const channel = uniqueName('private-encrypted-vault');
      const c = await env.client({ user: 'e1' });
      await c.subscribe(channel);
      const received = c.record(channel, 'secret');

      await json(env.sdk().trigger(channel, 'secret', { code: 'opens the vault' }));
      await until(() => received.length === 1);
      assert.deepEqual(received[0].data, { code: 'opens the vault' }, 'pusher-js decrypted it');
      const [frame] = c.framesOf('secret', { channel });
      assert.equal(typeof frame.data.nonce, 'string', `on the wire: ${JSON.stringify(frame)}`);
      assert.equal(typeof frame.data.ciphertext, 'string', `on the wire: ${JSON.stringify(frame)}`);
      assert.equal(frame.data.code, undefined, 'herald relayed ciphertext only');
    });
  });

  describe('presence channels', () => {
    test('members are users: a second tab of a user joins silently, member_removed comes with the last tab', async () => {
      const channel = uniqueName('presence-room');
      const carol = await env.client({ user: 'carol', info: { name: 'Carol' }, label: 'carol' });
      const carolJoin = await carol.subscription(channel);
      assert.ok(carolJoin.ok, JSON.stringify(carolJoin));
      assert.equal(carolJoin.data.count, 1);
      assert.deepEqual(carolJoin.data.me, { id: 'carol', info: { name: 'Carol' } });
      const since = carol.mark();
      const addedForCarol = carol.record(channel, 'pusher:member_added');
      const removedForCarol = carol.record(channel, 'pusher:member_removed');
      const memberFrames = (c, event) =>
        c.framesOf(`pusher_internal:${event}`, { channel, since: c === carol ? since : 0 }).map((f) => f.data.user_id);

      const tab1 = await env.client({ user: 'alice', info: { name: 'Alice' }, label: 'alice tab 1' });
      const tab1Join = await tab1.subscription(channel);
      assert.ok(tab1Join.ok, JSON.stringify(tab1Join));
      assert.equal(tab1Join.data.count, 2);
      assert.deepEqual(memberIds(tab1Join.data), ['alice', 'carol']);
      assert.deepEqual(tab1Join.data.me, { id: 'alice', info: { name: 'Alice' } });
      assert.deepEqual(tab1Join.data.get('carol'), { id: 'carol', info: { name: 'Carol' } });
      await until(() => addedForCarol.length >= 1);
      assert.deepEqual(addedForCarol[0].data, { id: 'alice', info: { name: 'Alice' } });

      const tab2 = await env.client({ user: 'alice', info: { name: 'Alice' }, label: 'alice tab 2' });
      const tab2Join = await tab2.subscription(channel);
      assert.ok(tab2Join.ok, JSON.stringify(tab2Join));
      assert.deepEqual(memberIds(tab2Join.data), ['alice', 'carol'], 'alice is listed once');
      assert.equal(tab2Join.data.count, 2);

      // Bob's arrival comes after anything alice's second tab caused.
      const bob = await env.client({ user: 'bob', info: { name: 'Bob' }, label: 'bob' });
      await bob.subscribe(channel);
      await carol.frame((f) => f.event === 'pusher_internal:member_added' && f.data.user_id === 'bob', { since });
      await tab1.frame((f) => f.event === 'pusher_internal:member_added' && f.data.user_id === 'bob');
      await tab2.frame((f) => f.event === 'pusher_internal:member_added' && f.data.user_id === 'bob');
      assert.deepEqual(memberFrames(carol, 'member_added'), ['alice', 'bob'], 'member_added once per user');
      assert.deepEqual(memberFrames(tab1, 'member_added'), ['bob'], 'no member_added for alice herself');
      assert.deepEqual(memberFrames(tab2, 'member_added'), ['bob'], 'no member_added for alice herself');
      assert.deepEqual(memberFrames(bob, 'member_added'), [], 'bob is told nothing about himself');

      // One of alice's tabs leaves: she is still there. Bob's leaving comes after.
      tab1.pusher.unsubscribe(channel);
      bob.disconnect();
      await until(() => removedForCarol.length >= 1);
      assert.deepEqual(memberFrames(carol, 'member_removed'), ['bob'], 'alice still has a tab in the room');
      assert.deepEqual(removedForCarol[0].data, { id: 'bob', info: { name: 'Bob' } });

      tab2.disconnect();
      await until(() => removedForCarol.length >= 2);
      assert.deepEqual(memberFrames(carol, 'member_removed'), ['bob', 'alice'], 'alice left with her last tab');
      assert.deepEqual(memberIds(carol.pusher.channel(channel).members), ['carol']);
    });

    test('the HTTP API sees users on presence channels and subscriptions on every channel', async () => {
      const prefix = uniqueName('q');
      const [publicA, publicB] = [`${prefix}-a`, `${prefix}-b`];
      const room = `presence-${prefix}-room`;
      const sdk = env.sdk();

      const alice1 = await env.client({ user: 'alice', label: 'alice 1' });
      const alice2 = await env.client({ user: 'alice', label: 'alice 2' });
      const bob = await env.client({ user: 'bob', label: 'bob' });
      await alice1.subscribe(publicA);
      await alice1.subscribe(publicB);
      await bob.subscribe(publicB);
      for (const c of [alice1, alice2, bob]) {
        await c.subscribe(room);
      }

      const publicList = await json(sdk.get({ path: '/channels', params: { filter_by_prefix: `${prefix}-` } }));
      assert.deepEqual(Object.keys(publicList.channels).sort(), [publicA, publicB], JSON.stringify(publicList));

      const presenceList = await json(
        sdk.get({ path: '/channels', params: { filter_by_prefix: `presence-${prefix}-`, info: 'user_count' } }),
      );
      assert.deepEqual(presenceList, { channels: { [room]: { user_count: 2 } } });

      const b = await json(sdk.get({ path: `/channels/${publicB}`, params: { info: 'subscription_count' } }));
      assert.equal(b.occupied, true, JSON.stringify(b));
      assert.equal(b.subscription_count, 2, JSON.stringify(b));

      const roomInfo = await json(sdk.get({ path: `/channels/${room}`, params: { info: 'user_count,subscription_count' } }));
      assert.equal(roomInfo.occupied, true, JSON.stringify(roomInfo));
      assert.equal(roomInfo.user_count, 2, `alice's two tabs are one user: ${JSON.stringify(roomInfo)}`);
      assert.equal(roomInfo.subscription_count, 3, `three connections: ${JSON.stringify(roomInfo)}`);

      const users = await json(sdk.get({ path: `/channels/${room}/users` }));
      assert.deepEqual(
        users.users.map((u) => u.id).sort(),
        ['alice', 'bob'],
        `each user once: ${JSON.stringify(users)}`,
      );

      const nobody = await json(sdk.get({ path: `/channels/${prefix}-never` }));
      assert.equal(nobody.occupied, false, JSON.stringify(nobody));

      bob.disconnect();
      await until(async () => {
        const now = await json(sdk.get({ path: `/channels/${room}/users` }));
        return now.users.length === 1 && now.users[0].id === 'alice';
      }, { what: () => 'bob to leave the users list' });
      await until(async () => {
        const now = await json(sdk.get({ path: `/channels/${publicB}`, params: { info: 'subscription_count' } }));
        return now.subscription_count === 1;
      }, { what: () => `${publicB} to count one subscription` });
    });
  });

  describe('client events', () => {
    test('on a private channel they reach the other subscriber and are not echoed to the sender', async () => {
      const channel = uniqueName('private-chat');
      const ann = await env.client({ user: 'ann', label: 'ann' });
      const ben = await env.client({ user: 'ben', label: 'ben' });
      const annChannel = await ann.subscribe(channel);
      const benChannel = await ben.subscribe(channel);
      const toBen = ben.record(channel, 'client-typing');
      const toAnn = ann.record(channel, 'client-ack');
      const since = ann.mark();

      assert.equal(annChannel.trigger('client-typing', { who: 'ann' }), true, 'pusher-js sent it');
      await until(() => toBen.length === 1);
      assert.deepEqual(toBen[0].data, { who: 'ann' });
      assert.equal(toBen[0].metadata.user_id, undefined, 'no user_id on a private channel');

      // Ben's answer comes after anything ann's own event caused at ann.
      benChannel.trigger('client-ack', { who: 'ben' });
      await until(() => toAnn.length === 1);
      assert.deepEqual(toAnn[0].data, { who: 'ben' });
      assert.deepEqual(ann.framesOf('client-typing', { since }), [], 'ann did not get her own event back');
    });

    test('on a presence channel they carry the sender\'s user_id', async () => {
      const channel = uniqueName('presence-chat');
      const ann = await env.client({ user: 'ann', label: 'ann' });
      const ben = await env.client({ user: 'ben', label: 'ben' });
      const annChannel = await ann.subscribe(channel);
      await ben.subscribe(channel);
      const toBen = ben.record(channel, 'client-wave');

      annChannel.trigger('client-wave', { hello: 'ben' });
      await until(() => toBen.length === 1);
      assert.deepEqual(toBen[0].data, { hello: 'ben' });
      assert.equal(toBen[0].metadata.user_id, 'ann', 'pusher-js hands the user_id to the callback');
      const [frame] = ben.framesOf('client-wave', { channel });
      assert.equal(frame.user_id, 'ann', `on the wire: ${JSON.stringify(frame)}`);
    });

    test('on a public channel they are refused with pusher:error and reach nobody', async () => {
      const channel = uniqueName('public-chat');
      const ann = await env.client({ label: 'ann' });
      const ben = await env.client({ label: 'ben' });
      const annChannel = await ann.subscribe(channel);
      await ben.subscribe(channel);
      const since = ann.mark();

      annChannel.trigger('client-nope', { x: 1 });
      const error = await ann.frame((f) => f.event === 'pusher:error', { since, what: 'pusher:error for the client event' });
      assert.equal(typeof error.data.message, 'string', JSON.stringify(error));

      await json(env.sdk().trigger(channel, 'marker', {}));
      await ben.frame((f) => f.channel === channel && f.event === 'marker');
      assert.deepEqual(ben.framesOf('client-nope'), [], 'ben never got it');
      assert.equal(ann.state, 'connected', 'a refused client event does not cost the connection');
    });
    test('a burst above client_event_rate (10/s) is cut short: each event is delivered or refused with 4301', async () => {
      const channel = uniqueName('private-burst');
      const ann = await env.client({ user: 'ann', label: 'ann' });
      const ben = await env.client({ user: 'ben', label: 'ben' });
      const annChannel = await ann.subscribe(channel);
      await ben.subscribe(channel);
      const toBen = ben.record(channel, 'client-burst');
      const since = ann.mark();
      const refusals = () => ann.framesOf('pusher:error', { since });

      for (let i = 0; i < 15; i += 1) {
        annChannel.trigger('client-burst', { i });
      }
      await until(() => toBen.length + refusals().length >= 15, {
        what: () => `15 outcomes: ${toBen.length} delivered, refusals ${JSON.stringify(refusals())}`,
      });

      assert.ok(refusals().length >= 1, 'the burst went over the limit');
      assert.ok(toBen.length >= 1, 'events within the limit were delivered');
      assert.equal(toBen.length + refusals().length, 15, 'nothing was dropped silently');
      assert.deepEqual(
        refusals().map((f) => f.data.code),
        refusals().map(() => 4301),
        `refusals carry code 4301: ${JSON.stringify(refusals())}`,
      );
      const delivered = toBen.map((r) => r.data.i);
      assert.deepEqual(delivered, [...delivered].sort((x, y) => x - y), 'delivered in the order sent');
      assert.equal(ann.state, 'connected', 'the rate limit does not cost the connection');
    });

    test('a client event larger than max_event_size is refused with 4301 and not delivered', async () => {
      const channel = uniqueName('private-bulky');
      const ann = await env.client({ user: 'ann', label: 'ann' });
      const ben = await env.client({ user: 'ben', label: 'ben' });
      const annChannel = await ann.subscribe(channel);
      await ben.subscribe(channel);
      const toBen = ben.record(channel, 'client-bulky');
      const since = ann.mark();

      annChannel.trigger('client-bulky', 'x'.repeat(11000));
      const error = await ann.frame((f) => f.event === 'pusher:error', { since, what: 'pusher:error for the big event' });
      assert.equal(error.data.code, 4301, JSON.stringify(error));

      annChannel.trigger('client-bulky', 'small');
      await until(() => toBen.length >= 1);
      assert.deepEqual(toBen.map((r) => r.data), ['small'], 'only the small event arrived');
    });
  });

  describe('users', () => {
    test('a signed-in user whose presence authorization names no member joins as the user it signed in as', async () => {
      const channel = uniqueName('presence-signed');
      const ivy = await env.client({ user: 'ivy', info: { name: 'Ivy' }, authMode: 'signed_in_member', label: 'ivy' });
      await ivy.signin();
      const joined = await ivy.subscription(channel);
      assert.ok(joined.ok, JSON.stringify(joined));
      assert.deepEqual(joined.data.me, { id: 'ivy', info: { name: 'Ivy' } });

      const jon = await env.client({ user: 'jon', info: { name: 'Jon' }, label: 'jon' });
      const seen = await jon.subscription(channel);
      assert.ok(seen.ok, JSON.stringify(seen));
      assert.deepEqual(seen.data.get('ivy'), { id: 'ivy', info: { name: 'Ivy' } }, 'the others see her as her sign-in said');
    });

    test('a signed-in user receives events sent to them with sendToUser, and only they do', async () => {
      const reader = await env.client({ user: 'reader-1', label: 'reader-1' });
      const other = await env.client({ user: 'reader-2', label: 'reader-2' });
      const success = await reader.signin();
      assert.equal(JSON.parse(success.data.user_data).id, 'reader-1', JSON.stringify(success));
      await other.signin();
      const toReader = [];
      const toOther = [];
      reader.pusher.user.bind('notice', (data) => toReader.push(data));
      other.pusher.user.bind('notice', (data) => toOther.push(data));
      const sdk = env.sdk();

      await json(sdk.sendToUser('reader-1', 'notice', { n: 1 }));
      await json(sdk.sendToUser('reader-2', 'notice', { n: 'marker' }));
      await until(() => toReader.length >= 1 && toOther.length >= 1, {
        what: () => `reader ${JSON.stringify(toReader)}, other ${JSON.stringify(toOther)}`,
      });
      assert.deepEqual(toReader, [{ n: 1 }]);
      assert.deepEqual(toOther, [{ n: 'marker' }]);
    });

    test('POST /users/{user_id}/events reaches every connection of that signed-in user', async () => {
      const tab1 = await env.client({ user: 'reader-3', label: 'reader-3 tab 1' });
      const tab2 = await env.client({ user: 'reader-3', label: 'reader-3 tab 2' });
      await tab1.signin();
      await tab2.signin();
      const got = [[], []];
      tab1.pusher.user.bind('notice', (data) => got[0].push(data));
      tab2.pusher.user.bind('notice', (data) => got[1].push(data));

      await json(env.sdk().post({ path: '/users/reader-3/events', body: { name: 'notice', data: JSON.stringify({ n: 2 }) } }));
      await until(() => got[0].length >= 1 && got[1].length >= 1, { what: () => JSON.stringify(got) });
      assert.deepEqual(got, [[{ n: 2 }], [{ n: 2 }]]);
    });

    test('terminateUserConnections closes the user\'s signed-in connections and nobody else\'s', async () => {
      const kicked1 = await env.client({ user: 'kicked', label: 'kicked 1' });
      const kicked2 = await env.client({ user: 'kicked', label: 'kicked 2' });
      // Same user id on a presence channel, never signed in: not terminated (Pusher docs).
      const presenceOnly = await env.client({ user: 'kicked', label: 'kicked, presence only' });
      const stays = await env.client({ user: 'stays', label: 'stays' });
      await kicked1.signin();
      await kicked2.signin();
      await stays.signin();
      const room = uniqueName('presence-kick');
      await presenceOnly.subscribe(room);
      await stays.subscribe(room);
      const before = new Map([kicked1, kicked2, presenceOnly, stays].map((c) => [c, { id: c.socketId, states: c.states.length }]));

      await json(env.sdk().terminateUserConnections('kicked'));

      for (const c of [kicked1, kicked2]) {
        await until(() => c.states.slice(before.get(c).states).some((s) => s !== 'connected'), {
          what: () => `${c.label} to lose its connection (states ${JSON.stringify(c.states)}, errors ${JSON.stringify(c.errors)})`,
        });
      }
      await json(env.sdk().trigger(room, 'still-here', {}));
      for (const c of [presenceOnly, stays]) {
        await c.frame((f) => f.channel === room && f.event === 'still-here');
        assert.equal(c.socketId, before.get(c).id, `${c.label} kept its connection`);
        assert.deepEqual(c.states.slice(before.get(c).states), [], `${c.label} never changed state`);
      }
    });
  });

  describe('cache channels', () => {
    test('an empty cache channel says pusher:cache_miss (and a cache_miss webhook); a later subscriber gets the last event', async () => {
      const channel = uniqueName('cache-price');
      const first = await env.client({ label: 'first' });
      const firstMiss = first.record(channel, 'pusher:cache_miss');
      const firstPrices = first.record(channel, 'price');
      await first.subscribe(channel);
      await until(() => firstMiss.length === 1, { what: () => `pusher:cache_miss; frames ${JSON.stringify(first.frames)}` });
      await env.webhooks.waitFor(
        () => env.webhooks.eventsFor(channel, 'cache_miss').length >= 1,
        { message: `cache_miss for ${channel}` },
      );

      const sdk = env.sdk();
      await json(sdk.trigger(channel, 'price', { v: 1 }));
      await json(sdk.trigger(channel, 'price', { v: 2 }));
      await until(() => firstPrices.length === 2);

      const second = await env.client({ label: 'second' });
      const secondMiss = second.record(channel, 'pusher:cache_miss');
      const secondPrices = second.record(channel, 'price');
      await second.subscribe(channel);
      await until(() => secondPrices.length >= 1, { what: () => `the cached event; frames ${JSON.stringify(second.frames)}` });

      await json(sdk.trigger(channel, 'price', { v: 3 }));
      await until(() => secondPrices.length >= 2);
      assert.deepEqual(secondPrices.map((p) => p.data), [{ v: 2 }, { v: 3 }], 'the last event, then live ones');
      assert.deepEqual(secondMiss, [], 'no cache miss with something cached');
      assert.equal(env.webhooks.eventsFor(channel, 'cache_miss').length, 1, 'one cache_miss webhook');
    });
  });

  describe('webhooks', () => {
    test('channel_occupied with the first subscriber, channel_vacated after the last, each once; signatures verify', async () => {
      const channel = uniqueName('hooked');
      const hooks = env.webhooks;
      const one = await env.client({ label: 'one' });
      const two = await env.client({ label: 'two' });
      const names = () => hooks.eventsFor(channel).map((e) => e.name);

      await one.subscribe(channel);
      await hooks.waitFor(() => names().includes('channel_occupied'), { message: `channel_occupied for ${channel}` });
      await two.subscribe(channel);
      one.pusher.unsubscribe(channel);
      two.pusher.unsubscribe(channel);
      await hooks.waitFor(() => names().includes('channel_vacated'), { message: `channel_vacated for ${channel}` });
      assert.deepEqual(names(), ['channel_occupied', 'channel_vacated']);

      // Occupied again: anything late about the first round shows up before this.
      await one.subscribe(channel);
      await hooks.waitFor(() => names().filter((n) => n === 'channel_occupied').length >= 2, {
        message: `the second channel_occupied for ${channel}`,
      });
      assert.deepEqual(names(), ['channel_occupied', 'channel_vacated', 'channel_occupied']);
      assert.deepEqual(hooks.rejected, [], 'every webhook request carried a valid X-Pusher-Key and X-Pusher-Signature');
      const request = hooks.requests.find((r) => r.body.events.some((e) => e.channel === channel));
      assert.ok(Math.abs(request.body.time_ms - Date.now()) < 60000, `time_ms is a current timestamp: ${request.body.time_ms}`);
    });

    test('member_added and member_removed once per user; client_event with socket_id, and user_id on presence', async () => {
      const room = uniqueName('presence-hooked');
      const privateRoom = uniqueName('private-hooked');
      const hooks = env.webhooks;
      const members = () =>
        hooks.eventsFor(room).filter((e) => e.name.startsWith('member_')).map((e) => `${e.name} ${e.user_id}`);

      const dana1 = await env.client({ user: 'dana', label: 'dana 1' });
      const dana2 = await env.client({ user: 'dana', label: 'dana 2' });
      const eli = await env.client({ user: 'eli', label: 'eli' });
      await dana1.subscribe(room);
      await dana2.subscribe(room);
      const eliRoom = await eli.subscribe(room);
      await hooks.waitFor(() => members().includes('member_added eli'), { message: `member_added eli on ${room}` });

      eliRoom.trigger('client-hello', { hi: 1 });
      const [hello] = await hooks.waitFor(() => {
        const found = hooks.eventsFor(room, 'client_event');
        return found.length > 0 ? found : undefined;
      }, { message: `client_event on ${room}` });
      assert.equal(hello.event, 'client-hello');
      assert.deepEqual(dataValue(hello.data), { hi: 1 });
      assert.equal(hello.socket_id, eli.socketId);
      assert.equal(hello.user_id, 'eli');

      await dana1.subscribe(privateRoom);
      const privateChannel = await eli.subscribe(privateRoom);
      privateChannel.trigger('client-psst', 'quiet');
      const [psst] = await hooks.waitFor(() => {
        const found = hooks.eventsFor(privateRoom, 'client_event');
        return found.length > 0 ? found : undefined;
      }, { message: `client_event on ${privateRoom}` });
      assert.equal(psst.event, 'client-psst');
      assert.equal(dataValue(psst.data), 'quiet');
      assert.equal(psst.socket_id, eli.socketId);
      assert.equal(psst.user_id, undefined, 'no user_id outside presence channels');

      dana1.pusher.unsubscribe(room);
      eli.disconnect();
      await hooks.waitFor(() => members().includes('member_removed eli'), { message: `member_removed eli on ${room}` });
      assert.ok(!members().includes('member_removed dana'), `dana still has a tab: ${JSON.stringify(members())}`);
      dana2.disconnect();
      await hooks.waitFor(() => members().includes('member_removed dana'), { message: `member_removed dana on ${room}` });

      assert.deepEqual(members().filter((m) => m.startsWith('member_added')).sort(), ['member_added dana', 'member_added eli']);
      assert.deepEqual(members().filter((m) => m.startsWith('member_removed')), ['member_removed eli', 'member_removed dana']);
      assert.deepEqual(hooks.rejected, [], 'every webhook request was signed correctly');
    });
  });

  describe('one hub for both protocols', () => {
    test('a publication through herald\'s API reaches pusher-js as the `event` tag, else as `message`', async () => {
      const c = await env.client();
      await c.subscribe('news');
      const updates = c.record('news', 'update');
      const messages = c.record('news', 'message');

      const tagged = await env.herald.api('publish', {
        channel: 'news',
        data: { headline: 'from the herald API' },
        tags: { event: 'update' },
      });
      assert.ok('result' in tagged, JSON.stringify(tagged));
      const untagged = await env.herald.api('publish', { channel: 'news', data: { n: 2 } });
      assert.ok('result' in untagged, JSON.stringify(untagged));

      await until(() => updates.length >= 1 && messages.length >= 1, { what: () => JSON.stringify(c.frames) });
      assert.deepEqual(updates.map((u) => u.data), [{ headline: 'from the herald API' }]);
      assert.deepEqual(messages.map((m) => m.data), [{ n: 2 }]);
    });

    test('an SDK trigger reaches a centrifuge-js subscriber with the event data as publication data', async () => {
      const cf = newClient(env.herald.url, { token: env.herald.token({ user: '42' }) });
      centrifugeClients.push(cf);
      const connected = nextEvent(cf, 'connected');
      cf.connect();
      await connected;
      const { sub } = await subscribed(cf, 'news');
      const publication = nextEvent(sub, 'publication');

      await json(env.sdk().trigger('news', 'evt', { a: 1 }));
      const ctx = await publication;
      assert.equal(ctx.channel, 'news');
      assert.deepEqual(ctx.data, { a: 1 });
    });
  });

  describe('laravel-echo', () => {
    test('channel().listen(".evt") receives an SDK trigger; listen("OrderShipped") receives App\\Events\\OrderShipped', async () => {
      const { echo } = await env.echo();
      const channel = uniqueName('orders');
      const raw = [];
      const shipped = [];
      const ready = new Promise((resolve) => {
        echo
          .channel(channel)
          .listen('.evt', (data) => raw.push(data))
          .listen('OrderShipped', (data) => shipped.push(data))
          .subscribed(resolve);
      });
      await within(ready, `echo subscribed to ${channel}`);

      const sdk = env.sdk();
      await json(sdk.trigger(channel, 'evt', { id: 1 }));
      await json(sdk.trigger(channel, 'App\\Events\\OrderShipped', { order: 7 }));
      await until(() => raw.length >= 1 && shipped.length >= 1, {
        what: () => `raw ${JSON.stringify(raw)}, shipped ${JSON.stringify(shipped)}`,
      });
      assert.deepEqual(raw, [{ id: 1 }]);
      assert.deepEqual(shipped, [{ order: 7 }]);
    });

    test('private().whisper reaches the other side\'s listenForWhisper and not the whisperer', async () => {
      const room = uniqueName('room');
      const a = await env.echo({ user: 'w1' });
      const b = await env.echo({ user: 'w2' });
      const toA = [];
      const toB = [];
      const aReady = new Promise((resolve) => {
        a.echo.private(room).listenForWhisper('typing', (data) => toA.push(data)).subscribed(resolve);
      });
      const bReady = new Promise((resolve) => {
        b.echo.private(room).listenForWhisper('typing', (data) => toB.push(data)).subscribed(resolve);
      });
      await within(Promise.all([aReady, bReady]), `both echos subscribed to private-${room}`);

      a.echo.private(room).whisper('typing', { name: 'w1' });
      await until(() => toB.length >= 1);
      b.echo.private(room).whisper('typing', { name: 'w2' });
      await until(() => toA.length >= 1);
      assert.deepEqual(toB, [{ name: 'w1' }]);
      assert.deepEqual(toA, [{ name: 'w2' }], 'a heard b, not herself');
    });

    test('join() calls here with the members, then joining and leaving as others come and go', async () => {
      const room = uniqueName('lobby');
      const a = await env.echo({ user: 'j1', info: { id: 'j1', name: 'Jo' } });
      const joining = [];
      const leaving = [];
      const aHere = await within(
        new Promise((resolve) => {
          a.echo
            .join(room)
            .here(resolve)
            .joining((user) => joining.push(user))
            .leaving((user) => leaving.push(user));
        }),
        `here() for j1 on presence-${room}`,
      );
      assert.deepEqual(aHere, [{ id: 'j1', name: 'Jo' }]);

      const b = await env.echo({ user: 'j2', info: { id: 'j2', name: 'Kim' } });
      const bHere = await within(new Promise((resolve) => b.echo.join(room).here(resolve)), `here() for j2`);
      assert.deepEqual(
        bHere.map((u) => u.id).sort(),
        ['j1', 'j2'],
        `here lists both: ${JSON.stringify(bHere)}`,
      );
      await until(() => joining.length >= 1);
      assert.deepEqual(joining, [{ id: 'j2', name: 'Kim' }]);

      b.echo.leave(room);
      await until(() => leaving.length >= 1);
      assert.deepEqual(leaving, [{ id: 'j2', name: 'Kim' }]);
    });
  });
});

describe('a Pusher app with client events off', () => {
  let env;

  before(async () => {
    env = await startHeraldWithPusher({}, { app: { client_events: false } });
  });

  after(async () => {
    await env?.stop();
  });

  afterEach(() => env.closeClients());

  test('a client event on a private channel is refused with pusher:error and reaches nobody', async () => {
    const channel = uniqueName('private-quiet');
    const ann = await env.client({ user: 'ann', label: 'ann' });
    const ben = await env.client({ user: 'ben', label: 'ben' });
    const annChannel = await ann.subscribe(channel);
    await ben.subscribe(channel);
    const since = ann.mark();

    annChannel.trigger('client-typing', { who: 'ann' });
    await ann.frame((f) => f.event === 'pusher:error', { since, what: 'pusher:error for the client event' });

    await json(env.sdk().trigger(channel, 'marker', {}));
    await ben.frame((f) => f.channel === channel && f.event === 'marker');
    assert.deepEqual(ben.framesOf('client-typing'), [], 'ben never got it');
    const hooks = env.webhooks.eventsFor(channel, 'client_event');
    assert.deepEqual(hooks, [], 'and no client_event webhook');
  });

  test('the pusher-js event API still works for SDK triggers on that app', async () => {
    const channel = uniqueName('private-quiet');
    const c = await env.client({ user: 'ann' });
    const ch = await c.subscribe(channel);
    const next = nextPusherEvent(ch, 'evt');
    await json(env.sdk().trigger(channel, 'evt', { ok: true }));
    assert.deepEqual((await next).data, { ok: true });
  });
});

describe('a Pusher app with max_connections = 2', () => {
  let env;

  before(async () => {
    env = await startHeraldWithPusher({}, { app: { max_connections: 2 } });
  });

  after(async () => {
    await env?.stop();
  });

  afterEach(() => env.closeClients());

  test('a third connection is refused with 4004 and pusher-js does not retry; a freed slot can be used again', async () => {
    const one = await env.client({ label: 'one' });
    await env.client({ label: 'two' });
    const three = await env.client({ label: 'three', connect: false });

    await three.reach('disconnected', { timeout: 10000 });
    assert.ok(three.errorCodes().includes(4004), `error 4004 "over connection quota": ${JSON.stringify(three.errors)}`);
    assert.ok(!three.states.includes('connected'), `never connected: ${JSON.stringify(three.states)}`);

    // Once herald has seen `one` leave (its channel is unoccupied), its slot is free.
    const channel = uniqueName('slot');
    await one.subscribe(channel);
    one.disconnect();
    await until(async () => {
      const info = await json(env.sdk().get({ path: `/channels/${channel}` }));
      return info.occupied === false;
    }, { what: () => `${channel} to be unoccupied after one left` });
    const four = await env.client({ label: 'four' });
    assert.equal(four.state, 'connected');
  });
});

describe('webhooks with batch = true and an events filter', () => {
  let env;

  before(async () => {
    env = await startHeraldWithPusher({}, { webhook: { batch: true, events: ['channel_occupied', 'member_added'] } });
  });

  after(async () => {
    await env?.stop();
  });

  afterEach(() => env.closeClients());

  test('only the listed events are sent, several to a request when they happen together', async () => {
    const hooks = env.webhooks;
    const channels = [1, 2, 3, 4, 5].map(() => uniqueName('batched'));
    const c = await env.client({ label: 'subscriber' });
    await Promise.all(channels.map((channel) => c.subscribe(channel)));
    await hooks.waitFor(
      () => channels.every((channel) => hooks.eventsFor(channel, 'channel_occupied').length === 1),
      { message: 'channel_occupied for all five channels' },
    );

    // The five channels are vacated (not a listed event); a join after that marks the end.
    c.disconnect();
    for (const channel of channels) {
      await until(async () => (await json(env.sdk().get({ path: `/channels/${channel}` }))).occupied === false, {
        what: () => `${channel} to be vacated`,
      });
    }
    const marker = uniqueName('presence-batched');
    const joiner = await env.client({ user: 'marker', label: 'marker' });
    await joiner.subscribe(marker);
    await hooks.waitFor(() => hooks.eventsFor(marker, 'member_added').length === 1, {
      message: `member_added on ${marker}`,
    });

    const names = new Set(hooks.events.map((e) => e.name));
    assert.deepEqual([...names].sort(), ['channel_occupied', 'member_added'], 'nothing outside the filter');
    assert.ok(
      hooks.requests.some((r) => r.body.events.length > 1),
      `some request carried several events: ${JSON.stringify(hooks.requests.map((r) => r.body.events.length))}`,
    );
    assert.deepEqual(hooks.rejected, [], 'every batch was signed correctly');
  });
});

describe('subscription counting (an app with subscription_count = true), on two nodes', () => {
  let env;
  let redis;

  before(async () => {
    redis = await startRedis();
    env = await startHeraldWithPusher(
      { engine: { type: 'redis', address: redis.url, prefix: `herald-count-${process.pid}` } },
      { nodes: 2, app: { subscription_count: true } },
    );
  });

  after(async () => {
    await env?.stop();
    await redis?.stop();
  });

  afterEach(() => env.closeClients());

  test('pusher-js hears pusher:subscription_count as subscribers come and go, and the webhook is sent', async () => {
    const channel = uniqueName('scores');
    const first = await env.client({ label: 'first' });
    const firstChannel = await first.subscribe(channel);
    const counts = [];
    firstChannel.bind('pusher:subscription_count', (data) => counts.push(data.subscription_count));
    await until(() => counts.at(-1) === 1, { what: () => `a count of 1 on ${channel}: ${counts}` });

    const second = await env.client({ node: 1, label: 'second, on the other node' });
    await second.subscribe(channel);
    await until(() => counts.at(-1) === 2, { what: () => `a count of 2 on ${channel}: ${counts}` });
    assert.equal(firstChannel.subscriptionCount, 2, 'pusher-js keeps the last count on the channel');

    second.pusher.unsubscribe(channel);
    await until(() => counts.at(-1) === 1, { what: () => `back to 1 on ${channel}: ${counts}` });
    const hooks = await env.webhooks.waitFor(() => {
      const found = env.webhooks.eventsFor(channel, 'subscription_count');
      return found.length >= 3 ? found : undefined;
    }, { message: `subscription_count webhooks for ${channel}` });
    assert.deepEqual(hooks.map((e) => e.subscription_count), [1, 2, 1]);
  });
});
