// Two Herald nodes sharing one Redis, and then one NATS, serve one Pusher
// app as a cluster.
// pusher-js, laravel-echo and the `pusher` server SDK talk to both nodes;
// triggers, presence, client events, webhooks and channel queries must
// behave as if there were one server.
//
// The test starts its own redis-server and nats-server on free ports and
// never uses any other. Run with: cd tests/compat && npm install && node --test pusher-cluster.test.mjs

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { json, startHeraldWithPusher, uniqueName, until, within } from './lib/pusher.mjs';
import { BACKPLANES, backplane } from './lib/nats.mjs';

const A = 0;
const B = 1;

for (const kind of BACKPLANES) describe(`two herald nodes sharing one ${kind}, speaking Pusher`, () => {
  let shared;
  let env;

  before(async () => {
    shared = await backplane(kind, `herald-compat-pusher-${process.pid}`);
    env = await startHeraldWithPusher({ engine: shared.engine }, { nodes: 2 });
  });

  after(async () => {
    await env?.stop();
    await shared?.stop();
  });

  afterEach(() => env.closeClients());

  /** Member events herald sent `client` about `channel` since `since`, as 'added id' / 'removed id'. */
  function memberFrames(client, channel, since = 0) {
    return client.frames
      .slice(since)
      .filter((f) => f.channel === channel && f.event.startsWith('pusher_internal:member_'))
      .map((f) => `${f.event.slice('pusher_internal:member_'.length)} ${f.data.user_id}`);
  }

  test('a subscriber on node A receives an SDK trigger sent to node B; socket_id given to B excludes a connection on A', async () => {
    const channel = uniqueName('across');
    const a1 = await env.client({ node: A, label: 'a1' });
    const a2 = await env.client({ node: A, label: 'a2' });
    const b1 = await env.client({ node: B, label: 'b1' });
    const received = [];
    for (const c of [a1, a2, b1]) {
      await c.subscribe(channel);
      received.push(c.record(channel, 'evt'));
    }
    const viaB = env.sdk({ node: B });

    await json(viaB.trigger(channel, 'evt', { n: 1 }));
    await json(viaB.trigger(channel, 'evt', { n: 2 }, { socket_id: a1.socketId }));
    await json(viaB.trigger(channel, 'evt', { n: 3 }));

    await until(() => received.every((r) => r.some((e) => e.data.n === 3)), {
      what: () => `n=3 everywhere: ${JSON.stringify(received)}`,
    });
    assert.deepEqual(received.map((r) => r.map((e) => e.data.n)), [
      [1, 3],
      [1, 2, 3],
      [1, 2, 3],
    ]);
  });

  test('presence spans the nodes: here() on B lists users of both; member_added and member_removed once per user', async () => {
    const room = uniqueName('lobby');
    const channel = `presence-${room}`;
    const uma = await env.client({ node: A, user: 'uma', info: { id: 'uma', name: 'Uma' }, label: 'uma on A' });
    const vic = await env.client({ node: B, user: 'vic', info: { id: 'vic', name: 'Vic' }, label: 'vic on B' });
    await uma.subscribe(channel);
    await vic.subscribe(channel);
    const umaSince = uma.mark();

    const observer = await env.echo({ node: B, user: 'obs', info: { id: 'obs', name: 'Observer' } });
    const joining = [];
    const leaving = [];
    const here = await within(
      new Promise((resolve) => {
        observer.echo
          .join(room)
          .here(resolve)
          .joining((user) => joining.push(user.id))
          .leaving((user) => leaving.push(user.id));
      }),
      `here() on node B for ${channel}`,
    );
    assert.deepEqual(here.map((u) => u.id).sort(), ['obs', 'uma', 'vic'], `here: ${JSON.stringify(here)}`);
    await uma.frame((f) => f.event === 'pusher_internal:member_added' && f.data.user_id === 'obs', { since: umaSince });

    // Uma opens a second tab on node B: she is already there.
    const umaOnB = await env.client({ node: B, user: 'uma', info: { id: 'uma', name: 'Uma' }, label: 'uma on B' });
    const umaOnBJoin = await umaOnB.subscription(channel);
    assert.ok(umaOnBJoin.ok, JSON.stringify(umaOnBJoin));
    assert.equal(umaOnBJoin.data.count, 3, 'obs, uma, vic: uma once');
    // A later join from the same node B orders after anything her second tab caused.
    const wes = await env.client({ node: B, user: 'wes', info: { id: 'wes', name: 'Wes' }, label: 'wes on B' });
    await wes.subscribe(channel);
    await until(() => joining.includes('wes'), { what: () => `joining wes: ${JSON.stringify(joining)}` });
    await uma.frame((f) => f.event === 'pusher_internal:member_added' && f.data.user_id === 'wes', { since: umaSince });
    assert.deepEqual(joining, ['wes'], 'the observer joined after uma and vic; her second tab added no one');
    assert.deepEqual(memberFrames(uma, channel, umaSince), ['added obs', 'added wes'], 'uma on A: no member_added for herself');

    // Uma's tab on A leaves: she is still there through B. The marker is a
    // leave from node A too, so it orders after anything her leaving caused.
    const xan = await env.client({ node: A, user: 'xan', info: { id: 'xan', name: 'Xan' }, label: 'xan on A' });
    await xan.subscribe(channel);
    await until(() => joining.includes('xan'));
    uma.disconnect();
    xan.disconnect();
    await until(() => leaving.includes('xan'), { what: () => `leaving xan: ${JSON.stringify(leaving)}` });
    assert.deepEqual(leaving, ['xan'], 'uma still has a tab on node B');

    umaOnB.disconnect();
    await until(() => leaving.includes('uma'), { what: () => `leaving uma: ${JSON.stringify(leaving)}` });
    assert.deepEqual(leaving, ['xan', 'uma']);
    assert.deepEqual(
      memberFrames(vic, channel).filter((m) => m === 'added uma' || m === 'removed uma'),
      ['removed uma'],
      'vic (joined after uma) saw uma leave once',
    );
  });

  test('client events cross nodes, carry user_id on presence and are not echoed to the sender', async () => {
    const channel = uniqueName('presence-talk');
    const ann = await env.client({ node: A, user: 'ann', label: 'ann on A' });
    const ben = await env.client({ node: B, user: 'ben', label: 'ben on B' });
    const annChannel = await ann.subscribe(channel);
    const benChannel = await ben.subscribe(channel);
    const toBen = ben.record(channel, 'client-ping');
    const toAnn = ann.record(channel, 'client-pong');
    const since = ann.mark();

    annChannel.trigger('client-ping', { from: 'A' });
    await until(() => toBen.length === 1, { what: () => `ben's frames: ${JSON.stringify(ben.frames)}` });
    assert.deepEqual(toBen[0].data, { from: 'A' });
    assert.equal(toBen[0].metadata.user_id, 'ann');

    benChannel.trigger('client-pong', { from: 'B' });
    await until(() => toAnn.length === 1, { what: () => `ann's frames: ${JSON.stringify(ann.frames)}` });
    assert.deepEqual(toAnn[0].data, { from: 'B' });
    assert.equal(toAnn[0].metadata.user_id, 'ben');
    assert.deepEqual(ann.framesOf('client-ping', { since }), [], 'ann did not get her own event back');

    const [hook] = await env.webhooks.waitFor(() => {
      const found = env.webhooks.eventsFor(channel, 'client_event').filter((e) => e.event === 'client-ping');
      return found.length > 0 ? found : undefined;
    }, { message: `client_event client-ping on ${channel}` });
    assert.equal(hook.socket_id, ann.socketId);
    assert.equal(hook.user_id, 'ann');
  });

  test('channel_occupied and channel_vacated come once for the cluster, member webhooks once per user', async () => {
    const channel = uniqueName('presence-shared');
    const hooks = env.webhooks;
    const names = () => hooks.eventsFor(channel).map((e) => (e.user_id ? `${e.name} ${e.user_id}` : e.name));

    const onA = await env.client({ node: A, user: 'yan', label: 'yan on A' });
    const onB = await env.client({ node: B, user: 'yan', label: 'yan on B' });
    const zoe = await env.client({ node: B, user: 'zoe', label: 'zoe on B' });
    await onA.subscribe(channel);
    await hooks.waitFor(() => names().includes('channel_occupied'), { message: `channel_occupied for ${channel}` });
    await onB.subscribe(channel);
    await zoe.subscribe(channel);
    await hooks.waitFor(() => names().includes('member_added zoe'), { message: `member_added zoe on ${channel}` });

    onA.disconnect();
    zoe.disconnect();
    await hooks.waitFor(() => names().includes('member_removed zoe'), { message: `member_removed zoe on ${channel}` });
    onB.disconnect();
    await hooks.waitFor(() => names().includes('channel_vacated'), { message: `channel_vacated for ${channel}` });
    await hooks.waitFor(() => names().includes('member_removed yan'), { message: `member_removed yan on ${channel}` });

    const count = (name) => names().filter((n) => n === name).length;
    const firstRound = JSON.stringify(names());
    assert.equal(count('channel_occupied'), 1, `one channel_occupied: ${firstRound}`);
    assert.equal(count('channel_vacated'), 1, `one channel_vacated: ${firstRound}`);
    assert.equal(count('member_added yan'), 1, `yan added once for two nodes: ${firstRound}`);
    assert.equal(count('member_removed yan'), 1, `yan removed once: ${firstRound}`);
    assert.ok(
      names().indexOf('member_removed zoe') < names().indexOf('member_removed yan'),
      `yan was removed only after her last connection (on B) left: ${firstRound}`,
    );

    // Occupied again, from node B: anything late about the first round shows up by the end of this one.
    const again = await env.client({ node: B, user: 'zoe', label: 'zoe again on B' });
    await again.subscribe(channel);
    await hooks.waitFor(() => count('channel_occupied') >= 2 && count('member_added zoe') >= 2, {
      message: `the second round's channel_occupied and member_added zoe for ${channel}`,
    });
    assert.equal(count('channel_occupied'), 2, `one more channel_occupied: ${JSON.stringify(names())}`);
    assert.equal(count('channel_vacated'), 1, `no late channel_vacated: ${JSON.stringify(names())}`);
    assert.equal(count('member_removed yan'), 1, `no late member_removed: ${JSON.stringify(names())}`);
    assert.deepEqual(hooks.rejected, [], 'every webhook request was signed correctly');
  });

  test('channel queries through either node count the subscriptions and users of both', async () => {
    const prefix = uniqueName('cq');
    const open = `${prefix}-open`;
    const onlyOnB = `${prefix}-b-only`;
    const room = `presence-${prefix}-room`;

    const ann1 = await env.client({ node: A, user: 'ann', label: 'ann on A' });
    const ann2 = await env.client({ node: B, user: 'ann', label: 'ann on B' });
    const ben = await env.client({ node: B, user: 'ben', label: 'ben on B' });
    await ann1.subscribe(open);
    await ann2.subscribe(open);
    await ben.subscribe(open);
    await ben.subscribe(onlyOnB);
    for (const c of [ann1, ann2, ben]) {
      await c.subscribe(room);
    }

    for (const node of [A, B]) {
      const sdk = env.sdk({ node });
      const where = `asked through node ${node === A ? 'A' : 'B'}`;

      const list = await json(sdk.get({ path: '/channels', params: { filter_by_prefix: `${prefix}-` } }));
      assert.deepEqual(Object.keys(list.channels).sort(), [onlyOnB, open], `${where}: ${JSON.stringify(list)}`);

      const openInfo = await json(sdk.get({ path: `/channels/${open}`, params: { info: 'subscription_count' } }));
      assert.equal(openInfo.occupied, true, `${where}: ${JSON.stringify(openInfo)}`);
      assert.equal(openInfo.subscription_count, 3, `${where}: ${JSON.stringify(openInfo)}`);

      const roomInfo = await json(sdk.get({ path: `/channels/${room}`, params: { info: 'user_count,subscription_count' } }));
      assert.equal(roomInfo.user_count, 2, `${where}: ${JSON.stringify(roomInfo)}`);
      assert.equal(roomInfo.subscription_count, 3, `${where}: ${JSON.stringify(roomInfo)}`);

      const presence = await json(
        sdk.get({ path: '/channels', params: { filter_by_prefix: `presence-${prefix}-`, info: 'user_count' } }),
      );
      assert.deepEqual(presence, { channels: { [room]: { user_count: 2 } } }, where);

      const users = await json(sdk.get({ path: `/channels/${room}/users` }));
      assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'ben'], `${where}: ${JSON.stringify(users)}`);
    }

    ann1.disconnect();
    for (const node of [A, B]) {
      await until(async () => {
        const info = await json(env.sdk({ node }).get({ path: `/channels/${room}`, params: { info: 'user_count,subscription_count' } }));
        return info.subscription_count === 2 && info.user_count === 2 ? info : undefined;
      }, { what: () => `node ${node}: two subscriptions of two users after ann left node A` });
    }
  });

  test('sendToUser through node A reaches the user signed in on node B; terminate through A closes it', async () => {
    const onB = await env.client({ node: B, user: 'remote-reader', label: 'reader on B' });
    await onB.signin();
    const got = [];
    onB.pusher.user.bind('notice', (data) => got.push(data));
    const viaA = env.sdk({ node: A });

    await json(viaA.sendToUser('remote-reader', 'notice', { hello: 'from A' }));
    await until(() => got.length >= 1);
    assert.deepEqual(got, [{ hello: 'from A' }]);

    const statesBefore = onB.states.length;
    await json(viaA.terminateUserConnections('remote-reader'));
    await until(() => onB.states.slice(statesBefore).some((s) => s !== 'connected'), {
      what: () => `the reader on B to lose its connection (states ${JSON.stringify(onB.states)})`,
    });
  });

  test('a cache channel filled through node A serves its last event to a new subscriber on node B', async () => {
    const channel = uniqueName('cache-shared');
    const viaA = env.sdk({ node: A });
    await json(viaA.trigger(channel, 'price', { v: 1 }));
    await json(viaA.trigger(channel, 'price', { v: 2 }));

    const onB = await env.client({ node: B, label: 'late on B' });
    const prices = onB.record(channel, 'price');
    const misses = onB.record(channel, 'pusher:cache_miss');
    await onB.subscribe(channel);
    await until(() => prices.length >= 1, { what: () => `the cached event; frames ${JSON.stringify(onB.frames)}` });
    assert.deepEqual(prices.map((p) => p.data), [{ v: 2 }]);
    assert.deepEqual(misses, []);
  });
});
