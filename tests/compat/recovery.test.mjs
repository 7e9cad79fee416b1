// History, recovery, presence and join/leave of Herald, driven by the official
// Centrifuge JavaScript client (npm `centrifuge`) against a real `herald serve`.
//
// Run with: cd tests/compat && npm install && npm test

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { dropTransport, newClient, nextEvent, reconnectGate, startHerald, subscribed, waitFor } from './lib/herald.mjs';

// A recovery replays at most this many missed publications.
const RECOVERY_LIMIT = 10;

const config = {
  channel: {
    namespaces: {
      // A stream channel: every subscription recoverable, 50 publications kept.
      feed: {
        subscribe: 'authenticated',
        publish: 'subscribers',
        history_size: 50,
        history_ttl: '5m',
        force_recovery: true,
        recovery_max_publications: RECOVERY_LIMIT,
        allow_history_for_subscriber: true,
      },
      // A room: who is in it, and who comes and goes.
      room: {
        subscribe: 'authenticated',
        publish: 'subscribers',
        presence: true,
        join_leave: true,
        allow_presence_for_subscriber: true,
      },
    },
  },
};

// Clients a test opens; each is disconnected after the test, pass or fail.
const clients = [];

afterEach(() => {
  while (clients.length > 0) {
    clients.pop().disconnect();
  }
});


/** Collects the publications a subscription receives, as {seq, offset}. */
function recordPublications(sub) {
  const received = [];
  sub.on('publication', (ctx) => received.push({ seq: ctx.data.seq, offset: ctx.offset }));
  return received;
}

describe('history, recovery and presence on a herald node', () => {
  let herald;

  before(async () => {
    herald = await startHerald(config);
  });

  after(async () => {
    await herald?.stop();
  });

  /** Opens a client for `user` (with connection `info`, if given) and waits until it is connected. */
  async function connectedClient(user = '42', options = {}, info = undefined) {
    const c = newClient(herald.url, { token: herald.token({ user, info }), ...options });
    clients.push(c);
    const connected = nextEvent(c, 'connected');
    c.connect();
    return { client: c, id: (await connected).client };
  }

  /** Publishes {seq} for every seq in `seqs` through the API, one after the other; returns the results. */
  async function publishSeqs(channel, seqs) {
    const results = [];
    for (const seq of seqs) {
      const reply = await herald.api('publish', { channel, data: { seq } });
      assert.ok(reply.result, `publish of seq ${seq} to ${channel}: ${JSON.stringify(reply)}`);
      results.push(reply.result);
    }
    return results;
  }

  function range(from, to) {
    return Array.from({ length: to - from + 1 }, (_, i) => from + i);
  }

  /**
   * Connects a client whose reconnects wait at a gate, subscribes it to
   * `channel`, and delivers publications 1..3 to it.
   */
  async function recoverableSubscriber(channel) {
    const gate = reconnectGate();
    const { client: c } = await connectedClient('42', {
      getData: gate.getData,
      minReconnectDelay: 50,
      maxReconnectDelay: 100,
    });
    const { sub, ctx } = await subscribed(c, channel);
    assert.equal(ctx.recoverable, true, `force_recovery makes the subscription recoverable: ${JSON.stringify(ctx)}`);
    const received = recordPublications(sub);

    await publishSeqs(channel, [1, 2, 3]);
    await waitFor(() => received.length >= 3, { message: `publications 1..3 on ${channel}` });
    assert.deepEqual(received.map((p) => p.seq), [1, 2, 3]);
    return { client: c, sub, gate, received };
  }

  /** Drops the client's transport and resolves once the client is reconnecting, held at the gate. */
  async function cutOff(c, gate) {
    gate.hold();
    const connecting = nextEvent(c, 'connecting');
    dropTransport(c);
    const ctx = await connecting;
    assert.equal(ctx.code, 1, `the client saw its transport close: ${JSON.stringify(ctx)}`);
  }

  test('a subscriber whose transport dies recovers exactly the 5 publications it missed', async () => {
    const channel = 'feed:a';
    const { client: c, sub, gate, received } = await recoverableSubscriber(channel);

    await cutOff(c, gate);
    const missed = await publishSeqs(channel, range(4, 8));
    assert.equal(c.state, 'connecting', 'all 5 were published while the client was away');

    const resubscribed = nextEvent(sub, 'subscribed');
    gate.release();
    const ctx = await resubscribed;
    assert.equal(ctx.wasRecovering, true, `subscribed after reconnect: ${JSON.stringify(ctx)}`);
    assert.equal(ctx.recovered, true, `subscribed after reconnect: ${JSON.stringify(ctx)}`);

    // A publication sent after the resubscribe arrives after anything replayed.
    await publishSeqs(channel, [9]);
    await waitFor(() => received.some((p) => p.seq === 9), { message: 'the marker publication 9' });

    assert.deepEqual(
      received.map((p) => p.seq),
      range(1, 9),
      'publications 1..3 live, 4..8 recovered, 9 live: each once, in order',
    );
    assert.deepEqual(
      received.slice(3, 8).map((p) => p.offset),
      missed.map((r) => r.offset),
      'the recovered publications carry the offsets their publishes returned',
    );
  });

  test('a server-side subscription through the API tells centrifuge-js where in the stream it starts', async () => {
    const channel = 'feed:api';
    const published = await publishSeqs(channel, [1, 2]);
    const { client: c } = await connectedClient('api-sub');
    const serverSubscribed = nextEvent(c, 'subscribed', { filter: (ctx) => ctx.channel === channel });
    const received = [];
    c.on('publication', (ctx) => received.push({ seq: ctx.data.seq, offset: ctx.offset }));

    const reply = await herald.api('subscribe', { user: 'api-sub', channel });
    assert.ok('result' in reply, `subscribe reply: ${JSON.stringify(reply)}`);
    const ctx = await serverSubscribed;
    assert.equal(ctx.positioned, true, JSON.stringify(ctx));
    assert.equal(ctx.recoverable, true, JSON.stringify(ctx));
    assert.deepEqual(ctx.streamPosition, { offset: published[1].offset, epoch: published[1].epoch }, 'the top of the stream');

    const [next] = await publishSeqs(channel, [3]);
    await waitFor(() => received.length >= 1, { message: 'publication 3 on the server-side subscription' });
    assert.deepEqual(received, [{ seq: 3, offset: next.offset }]);
  });

  test(`a subscriber that missed more than ${RECOVERY_LIMIT} publications is told recovered: false and gets no replay`, async () => {
    const channel = 'feed:gap';
    const { client: c, sub, gate, received } = await recoverableSubscriber(channel);

    await cutOff(c, gate);
    await publishSeqs(channel, range(4, 18));
    assert.equal(c.state, 'connecting', 'all 15 were published while the client was away');

    const resubscribed = nextEvent(sub, 'subscribed');
    gate.release();
    const ctx = await resubscribed;
    assert.equal(ctx.wasRecovering, true, `subscribed after reconnect: ${JSON.stringify(ctx)}`);
    assert.equal(ctx.recovered, false, `subscribed after reconnect: ${JSON.stringify(ctx)}`);

    await publishSeqs(channel, [19]);
    await waitFor(() => received.some((p) => p.seq === 19), { message: 'the marker publication 19' });

    assert.deepEqual(
      received.map((p) => p.seq),
      [1, 2, 3, 19],
      'nothing of the 15 missed publications was replayed, not even part of them',
    );
  });

  test('a subscription with getState, from a position that cannot recover, is refused (112) and loads its state again', async () => {
    const channel = 'feed:state';
    await publishSeqs(channel, [1, 2]);
    const { client: c } = await connectedClient('42');
    let asked = 0;
    const sub = c.newSubscription(channel, {
      minResubscribeDelay: 50,
      maxResubscribeDelay: 100,
      // The app's own state, and the position it goes with: first one of an
      // epoch long gone, then the stream's top as the server API reads it.
      getState: async () => {
        asked += 1;
        if (asked === 1) {
          return { offset: 1, epoch: 'an-epoch-long-gone' };
        }
        const top = await herald.api('history', { channel, limit: 0 });
        return { offset: top.result.offset, epoch: top.result.epoch };
      },
    });
    const received = recordPublications(sub);
    const isSubscribed = nextEvent(sub, 'subscribed');
    sub.subscribe();
    const ctx = await isSubscribed;
    assert.equal(asked, 2, `the stale position was refused, not taken as recovered: false: ${JSON.stringify(ctx)}`);

    await publishSeqs(channel, [3]);
    await waitFor(() => received.some((p) => p.seq === 3), { message: 'publication 3' });
    assert.deepEqual(received.map((p) => p.seq), [3], 'from the state it loaded on: nothing replayed, nothing missed');
  });

  test('a subscriber pages through the history of feed:b, oldest first and in reverse', async () => {
    const channel = 'feed:b';
    const { client: c } = await connectedClient('42');
    const { sub } = await subscribed(c, channel);

    const published = await publishSeqs(channel, range(1, 7));
    const epoch = published[0].epoch;
    assert.ok(typeof epoch === 'string' && epoch.length > 0, `publish results carry an epoch: ${JSON.stringify(published)}`);
    for (let i = 0; i < published.length; i++) {
      assert.equal(published[i].epoch, epoch, `one epoch for the whole stream: ${JSON.stringify(published)}`);
      if (i > 0) {
        assert.equal(published[i].offset, published[i - 1].offset + 1, `offsets grow one by one: ${JSON.stringify(published)}`);
      }
    }
    const offsetOf = (seq) => published[seq - 1].offset;
    const page = (history) => history.publications.map((p) => ({ seq: p.data.seq, offset: p.offset }));
    const expected = (...seqs) => seqs.map((seq) => ({ seq, offset: offsetOf(seq) }));

    const first = await sub.history({ limit: 3 });
    assert.deepEqual(page(first), expected(1, 2, 3), 'the first page holds the 3 oldest');
    assert.equal(first.epoch, epoch);
    assert.equal(first.offset, offsetOf(7), 'history reports the top of the stream');

    const second = await sub.history({ limit: 3, since: { offset: offsetOf(3), epoch } });
    assert.deepEqual(page(second), expected(4, 5, 6), 'the second page starts after the last one seen');

    const third = await sub.history({ limit: 3, since: { offset: offsetOf(6), epoch } });
    assert.deepEqual(page(third), expected(7), 'the last page holds what is left');

    const newest = await sub.history({ limit: 2, reverse: true });
    assert.deepEqual(page(newest), expected(7, 6), 'reversed, the newest two come newest first');
    assert.equal(newest.epoch, epoch);
  });

  test('presence lists every client in room:lobby, and presence stats count a second tab', async () => {
    const channel = 'room:lobby';
    const alice = await connectedClient('42', {}, { name: 'Alice' });
    const bob = await connectedClient('43', {}, { name: 'Bob' });
    const { sub: aliceLobby } = await subscribed(alice.client, channel);
    await subscribed(bob.client, channel);

    const { clients: present } = await aliceLobby.presence();
    assert.deepEqual(Object.keys(present).sort(), [alice.id, bob.id].sort(), `presence: ${JSON.stringify(present)}`);
    assert.equal(present[alice.id].user, '42');
    assert.equal(present[alice.id].client, alice.id);
    assert.deepEqual(present[alice.id].connInfo, { name: 'Alice' }, 'presence carries the token\'s info');
    assert.equal(present[bob.id].user, '43');
    assert.equal(present[bob.id].client, bob.id);
    assert.deepEqual(present[bob.id].connInfo, { name: 'Bob' });

    const aliceTab = await connectedClient('42');
    await subscribed(aliceTab.client, channel);

    assert.deepEqual(await aliceLobby.presenceStats(), { numClients: 3, numUsers: 2 });
    assert.deepEqual(await herald.api('presence_stats', { channel }), { result: { num_clients: 3, num_users: 2 } });
  });

  test('a subscriber asking for join/leave sees another user join room:x and leave it', async () => {
    const channel = 'room:x';
    const alice = await connectedClient('42');
    const { sub: aliceRoom } = await subscribed(alice.client, channel, { joinLeave: true });
    const fromBob = (ctx) => ctx.info.user === '43';

    const bob = await connectedClient('43', {}, { name: 'Bob' });
    const joined = nextEvent(aliceRoom, 'join', { filter: fromBob });
    const { sub: bobRoom } = await subscribed(bob.client, channel);
    const join = await joined;
    assert.equal(join.channel, channel);
    assert.equal(join.info.client, bob.id, `join: ${JSON.stringify(join)}`);
    assert.deepEqual(join.info.connInfo, { name: 'Bob' }, `join: ${JSON.stringify(join)}`);

    const unsubscribedLeave = nextEvent(aliceRoom, 'leave', { filter: fromBob });
    bobRoom.unsubscribe();
    const leave = await unsubscribedLeave;
    assert.equal(leave.channel, channel);
    assert.equal(leave.info.client, bob.id, `leave on unsubscribe: ${JSON.stringify(leave)}`);

    const rejoined = nextEvent(aliceRoom, 'join', { filter: fromBob });
    bobRoom.subscribe();
    await rejoined;
    const disconnectedLeave = nextEvent(aliceRoom, 'leave', { filter: fromBob });
    bob.client.disconnect();
    const leaveOnDisconnect = await disconnectedLeave;
    assert.equal(leaveOnDisconnect.info.client, bob.id, `leave on disconnect: ${JSON.stringify(leaveOnDisconnect)}`);
  });

  // An empty `since` epoch means "any epoch", as Centrifugo's servers read
  // it; centrifuge-js leaves the epoch out of a `since` that has none.
  test(
    'a `since` position without an epoch continues the stream, as in Centrifuge',
    async () => {
      const channel = 'feed:any-epoch';
      await publishSeqs(channel, [1, 2, 3]);
      const reader = await connectedClient('42');
      const { sub } = await subscribed(reader.client, channel);
      const history = await sub.history({ limit: 10, since: { offset: 1 } }).then(
        (result) => result.publications.map((p) => p.data.seq),
        (err) => err,
      );

      const late = await connectedClient('43');
      const lateSub = late.client.newSubscription(channel, { since: { offset: 1, epoch: '' } });
      const received = recordPublications(lateSub);
      const subscribing = nextEvent(lateSub, 'subscribed');
      lateSub.subscribe();
      const ctx = await subscribing;
      await publishSeqs(channel, [4]);
      await waitFor(() => received.some((p) => p.seq === 4), { message: 'the marker publication 4' });

      assert.deepEqual(
        { history, recovered: ctx.recovered, received: received.map((p) => p.seq) },
        { history: [2, 3], recovered: true, received: [2, 3, 4] },
        `subscribed: ${JSON.stringify(ctx)}`,
      );
    },
  );

  test('an API publish repeated with the same idempotency_key returns the first result and delivers once', async () => {
    const channel = 'feed:idem';
    const { client: c } = await connectedClient('42');
    const { sub } = await subscribed(c, channel);
    const received = recordPublications(sub);

    const publish = { channel, data: { seq: 1 }, idempotency_key: 'order-1' };
    const first = await herald.api('publish', publish);
    const repeat = await herald.api('publish', publish);
    assert.equal(typeof first.result?.offset, 'number', `first publish: ${JSON.stringify(first)}`);
    assert.deepEqual(repeat, first, 'the repeat answers with the first result');

    const [marker] = await publishSeqs(channel, [2]);
    await waitFor(() => received.some((p) => p.seq === 2), { message: 'the marker publication 2' });

    assert.deepEqual(received.map((p) => p.seq), [1, 2], 'the subscriber got the publication once, then the marker');
    assert.equal(marker.offset, first.result.offset + 1, 'the repeat took no offset in the stream');
    const history = await herald.api('history', { channel, limit: -1 });
    assert.deepEqual(
      history.result?.publications?.map((p) => p.data.seq),
      [1, 2],
      `history holds it once: ${JSON.stringify(history)}`,
    );
  });
});
