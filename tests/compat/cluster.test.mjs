// Three Herald nodes sharing one Redis, and then one NATS, form a cluster.
// The official Centrifuge JavaScript client (npm `centrifuge`) talks to real
// `herald serve` processes on every node; publications, presence,
// join/leave and recovery must work across them as if there were one
// server, whichever backplane carries them.
//
// The tests start their own redis-server and nats-server on free ports and
// never use any other. Run with: cd tests/compat && npm install && npm test

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  defaultConfig,
  newClient,
  nextEvent,
  reconnectGate,
  routedWebSocket,
  startHerald,
  subscribed,
  waitFor,
} from './lib/herald.mjs';
import { BACKPLANES, backplane } from './lib/nats.mjs';

// Clients a test opens; each is disconnected after the test, pass or fail.
const clients = [];

afterEach(() => {
  while (clients.length > 0) {
    clients.pop().disconnect();
  }
});

/** The configuration of every node of a cluster on `engine`: one secret, one API key, one set of namespaces. */
function clusterConfig(engine) {
  const { client, api } = defaultConfig();
  return {
    engine,
    client,
    api,
    channel: {
      namespaces: {
        chat: {
          subscribe: 'authenticated',
          publish: 'subscribers',
          history_size: 100,
          history_ttl: '5m',
          force_recovery: true,
          presence: true,
          join_leave: true,
          allow_presence_for_subscriber: true,
        },
      },
    },
  };
}


/** Collects what a subscription receives, as {from, n, offset}. */
function recordPublications(sub) {
  const received = [];
  sub.on('publication', (ctx) => received.push({ from: ctx.data.from, n: ctx.data.n, offset: ctx.offset }));
  return received;
}

function range(from, to) {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

for (const kind of BACKPLANES) describe(`three herald nodes sharing one ${kind}`, () => {
  let shared;
  // Nodes A, B and C, in that order.
  let nodes = [];

  before(async () => {
    shared = await backplane(kind, `herald-compat-${process.pid}`);
    const config = clusterConfig(shared.engine);
    nodes = await Promise.all([1, 2, 3].map(() => startHerald(config)));
  });

  after(async () => {
    await Promise.allSettled(nodes.map((node) => node.stop()));
    await shared?.stop();
  });

  /** Opens a client for `user` on `node` and waits until it is connected. */
  async function connectedClient(node, user, options = {}) {
    const c = newClient(node.url, { token: node.token({ user }), ...options });
    clients.push(c);
    const connected = nextEvent(c, 'connected');
    c.connect();
    return { client: c, id: (await connected).client };
  }

  /** One client per node (users 1, 2 and 3), each subscribed to `channel` and recording what it receives. */
  async function onePerNode(channel) {
    const members = [];
    for (const [i, node] of nodes.entries()) {
      const user = String(i + 1);
      const { client, id } = await connectedClient(node, user);
      const { sub } = await subscribed(client, channel);
      members.push({ user, id, sub, received: recordPublications(sub) });
    }
    return members;
  }

  /** Publishes {from: 'api', n} through the API of `node` for every n in `ns`, one after the other. */
  async function publishThroughApi(node, channel, ns) {
    const results = [];
    for (const n of ns) {
      const reply = await node.api('publish', { channel, data: { from: 'api', n } });
      assert.ok(reply.result, `publish of ${n} to ${channel}: ${JSON.stringify(reply)}`);
      results.push(reply.result);
    }
    return results;
  }

  /**
   * Publishes a marker through node A's API and waits until every member has
   * it. Publications are delivered in channel order, so anything a member
   * receives before the marker has arrived by then, duplicates included.
   */
  async function settle(members, channel) {
    await publishThroughApi(nodes[0], channel, ['marker']);
    await waitFor(() => members.every((m) => m.received.some((p) => p.n === 'marker')), {
      message: `the marker on ${channel} at every node`,
    });
  }

  test('a message from a client on each node reaches the clients on all three nodes once, in one order', async () => {
    const channel = 'chat:room';
    const members = await onePerNode(channel);

    await Promise.all(members.map((m) => m.sub.publish({ from: m.user, n: 1 })));
    await settle(members, channel);

    const first = members[0].received;
    assert.deepEqual(
      first.slice(0, 3).map((p) => p.from).sort(),
      ['1', '2', '3'],
      `the client on node A got each client's message once: ${JSON.stringify(first)}`,
    );
    assert.deepEqual(first.map((p) => p.offset), [1, 2, 3, 4], 'offsets 1..3, then the marker at 4');
    for (const m of members.slice(1)) {
      assert.deepEqual(
        m.received,
        first,
        `user ${m.user} saw the same publications, offsets and order as user 1`,
      );
    }
  });

  test('bursts from clients on all three nodes keep each publisher\'s order and one channel order everywhere', async () => {
    const channel = 'chat:burst';
    const perPublisher = 5;
    const members = await onePerNode(channel);

    // Every client publishes its burst one message after the other; the
    // three bursts run at the same time, so they interleave in the channel.
    await Promise.all(
      members.map(async (m) => {
        for (const n of range(1, perPublisher)) {
          await m.sub.publish({ from: m.user, n });
        }
      }),
    );
    await settle(members, channel);

    const total = 3 * perPublisher;
    const first = members[0].received;
    assert.deepEqual(
      first.map((p) => p.offset),
      range(1, total + 1),
      `consecutive offsets, the marker last: ${JSON.stringify(first)}`,
    );
    for (const publisher of members) {
      assert.deepEqual(
        first.filter((p) => p.from === publisher.user).map((p) => p.n),
        range(1, perPublisher),
        `user ${publisher.user}'s messages arrive once each, in the order they were published`,
      );
    }
    for (const m of members.slice(1)) {
      assert.deepEqual(m.received, first, `user ${m.user} saw the same channel as user 1`);
    }
  });

  test('presence asked through node A counts the clients on all three nodes', async () => {
    const channel = 'chat:presence';
    const members = await onePerNode(channel);
    const [onA] = members;

    assert.deepEqual(await onA.sub.presenceStats(), { numClients: 3, numUsers: 3 });

    const { clients: present } = await onA.sub.presence();
    assert.deepEqual(
      Object.values(present).map((info) => [info.client, info.user]).sort(),
      members.map((m) => [m.id, m.user]).sort(),
      `presence lists every node's client: ${JSON.stringify(present)}`,
    );
    assert.deepEqual(await nodes[1].api('presence_stats', { channel }), {
      result: { num_clients: 3, num_users: 3 },
    });
  });

  test('a joinLeave subscriber on node A sees a user on node C join and leave', async () => {
    const channel = 'chat:lobby';
    const [a, , c] = nodes;
    const alice = await connectedClient(a, '1');
    const { sub: aliceLobby } = await subscribed(alice.client, channel, { joinLeave: true });
    const fromCarol = (ctx) => ctx.info.user === '3';

    const carol = await connectedClient(c, '3');
    const joined = nextEvent(aliceLobby, 'join', { filter: fromCarol });
    const { sub: carolLobby } = await subscribed(carol.client, channel);
    const join = await joined;
    assert.equal(join.channel, channel);
    assert.equal(join.info.client, carol.id, `join: ${JSON.stringify(join)}`);

    const left = nextEvent(aliceLobby, 'leave', { filter: fromCarol });
    carolLobby.unsubscribe();
    const leave = await left;
    assert.equal(leave.channel, channel);
    assert.equal(leave.info.client, carol.id, `leave: ${JSON.stringify(leave)}`);
  });

  // Kills node B: keep this test last.
  test('a client whose node is killed reconnects to node C and recovers exactly what it missed', async () => {
    const channel = 'chat:failover';
    const [a, b, c] = nodes;
    // A load balancer in front of B and C: B while it lives, then C.
    const balancer = routedWebSocket(() => (b.isRunning() ? b : c).url);
    const gate = reconnectGate();
    const { client } = await connectedClient(b, '2', {
      websocket: balancer.WebSocket,
      getData: gate.getData,
      minReconnectDelay: 50,
      maxReconnectDelay: 100,
    });
    assert.deepEqual(balancer.opened, [b.url], 'the client first connects to node B');
    const { sub, ctx } = await subscribed(client, channel);
    assert.equal(ctx.recoverable, true, `force_recovery makes the subscription recoverable: ${JSON.stringify(ctx)}`);
    const received = recordPublications(sub);

    await publishThroughApi(a, channel, [1, 2, 3]);
    await waitFor(() => received.length >= 3, { message: 'publications 1..3 through node B' });

    gate.hold();
    const connecting = nextEvent(client, 'connecting');
    const exit = await b.kill('SIGKILL');
    assert.equal(exit.signal, 'SIGKILL', `node B was killed: ${JSON.stringify(exit)}`);
    const lost = await connecting;
    assert.equal(lost.code, 1, `the client saw its transport close: ${JSON.stringify(lost)}`);

    const missed = await publishThroughApi(a, channel, range(4, 8));
    assert.equal(client.state, 'connecting', 'all 5 were published while the client was away');

    const resubscribed = nextEvent(sub, 'subscribed');
    gate.release();
    const recovery = await resubscribed;
    assert.equal(recovery.wasRecovering, true, `subscribed after reconnect: ${JSON.stringify(recovery)}`);
    assert.equal(recovery.recovered, true, `subscribed after reconnect: ${JSON.stringify(recovery)}`);
    assert.deepEqual(balancer.opened.slice(1), [c.url], 'the one reconnect went to node C');

    // A publication sent after the resubscribe arrives after anything replayed.
    await publishThroughApi(a, channel, [9]);
    await waitFor(() => received.some((p) => p.n === 9), { message: 'the marker publication 9 through node C' });

    assert.deepEqual(
      received.map((p) => p.n),
      range(1, 9),
      'publications 1..3 live from B, 4..8 recovered from C, 9 live from C: each once, in order',
    );
    assert.deepEqual(
      received.slice(3, 8).map((p) => p.offset),
      missed.map((r) => r.offset),
      'the recovered publications carry the offsets their publishes returned',
    );
  });
});
