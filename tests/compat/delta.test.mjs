// Fossil delta compression, applied by the clients themselves: centrifuge-js
// (JSON and its Protobuf build) subscribe with `delta: 'fossil'` to a
// dashboard namespace that allows it, and must see every published state
// exactly, while most of them travel as deltas. A subscriber that does not
// ask, in the same channel, gets plain publications.
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
      dashboard: {
        subscribe: 'authenticated',
        history_size: 100,
        history_ttl: '5m',
        force_recovery: true,
        allowed_delta_types: ['fossil'],
      },
      plain: { subscribe: 'authenticated' },
    },
  },
};

/** A dashboard-like state of about 4 KB; `tick` changes a few fields. */
function state(tick) {
  return {
    tick,
    visitors: 1000 + tick * 7,
    load: [0.5 + tick / 100, 0.25, 0.125],
    hosts: Array.from({ length: 40 }, (_, i) => ({ host: `web-${i}`, up: i !== tick % 40, rps: 100 + i, region: 'eu-west-1' })),
    title: 'Opérations — état «live»',
  };
}

const opened = [];

afterEach(() => {
  while (opened.length > 0) opened.pop().disconnect();
});

describe('fossil deltas on a herald node', () => {
  let herald;

  before(async () => {
    herald = await startHerald(config);
  });

  after(async () => {
    await herald?.stop();
  });

  async function connected(c) {
    opened.push(c);
    const done = nextEvent(c, 'connected');
    c.connect();
    await done;
    return c;
  }

  async function publishStates(channel, ticks) {
    for (const tick of ticks) await herald.api('publish', { channel, data: state(tick) });
  }

  test('centrifuge-js gets every state exactly, all but the first as deltas', async () => {
    const channel = 'dashboard:ops';
    const c = await connected(newClient(herald.url, { token: herald.token({ user: 'ops' }) }));
    const { sub, ctx } = await subscribed(c, channel, { delta: 'fossil' });
    assert.equal(sub._delta_negotiated, true, `the subscribe reply grants deltas: ${JSON.stringify(ctx)}`);
    const received = [];
    sub.on('publication', (p) => received.push(p.data));

    await publishStates(channel, [1, 2, 3, 4, 5]);
    await waitFor(() => received.length === 5, { message: `five states, got ${received.length}` });
    assert.deepEqual(received, [1, 2, 3, 4, 5].map(state));
    assert.equal(sub._deltaNumFull, 1, 'the first in full');
    assert.equal(sub._deltaNumDelta, 4, 'the rest as deltas');
    assert.ok(sub._deltaBytesReceived * 4 < sub._deltaBytesDecoded, `bytes on the wire ${sub._deltaBytesReceived} of ${sub._deltaBytesDecoded}`);
  });

  test('the Protobuf build applies the same deltas, beside a subscriber that did not ask', async () => {
    const channel = 'dashboard:pb';
    const pb = await connected(
      new ProtobufCentrifuge(herald.url, { token: herald.token({ user: 'pb' }), websocket: WebSocket }),
    );
    const plain = await connected(newClient(herald.url, { token: herald.token({ user: 'plain' }) }));
    const { sub: pbSub } = await subscribed(pb, channel, { delta: 'fossil' });
    const { sub: plainSub } = await subscribed(plain, channel);
    const decoded = [];
    const plainly = [];
    pbSub.on('publication', (p) => decoded.push(JSON.parse(new TextDecoder().decode(p.data))));
    plainSub.on('publication', (p) => plainly.push(p.data));

    await publishStates(channel, [10, 11, 12]);
    await waitFor(() => decoded.length === 3 && plainly.length === 3, { message: 'three states each' });
    assert.deepEqual(decoded, [10, 11, 12].map(state));
    assert.deepEqual(plainly, [10, 11, 12].map(state));
    assert.equal(pbSub._deltaNumDelta, 2);
    assert.equal(plainSub._delta_negotiated, false);
  });

  test('after a cut connection the recovered states come in full and deltas resume', async () => {
    const channel = 'dashboard:cut';
    const gate = reconnectGate();
    const c = await connected(
      newClient(herald.url, { token: herald.token({ user: 'cut' }), getData: gate.getData, minReconnectDelay: 50, maxReconnectDelay: 100 }),
    );
    const { sub } = await subscribed(c, channel, { delta: 'fossil' });
    const received = [];
    sub.on('publication', (p) => received.push(p.data.tick));
    await publishStates(channel, [1, 2]);
    await waitFor(() => received.length === 2, { message: 'two states' });

    gate.hold();
    const connecting = nextEvent(c, 'connecting');
    dropTransport(c);
    await connecting;
    await publishStates(channel, [3, 4]);
    const resubscribed = nextEvent(sub, 'subscribed');
    gate.release();
    assert.equal((await resubscribed).recovered, true);
    await publishStates(channel, [5, 6]);
    await waitFor(() => received.length === 6, { message: `six states, got ${received}` });
    assert.deepEqual(received, [1, 2, 3, 4, 5, 6]);
    assert.ok(sub._deltaNumDelta >= 2, `deltas resumed after the recovery: ${sub._deltaNumDelta}`);
  });

  test('where the namespace does not allow deltas, a subscriber that asks gets plain publications', async () => {
    const channel = 'plain:status';
    const c = await connected(newClient(herald.url, { token: herald.token({ user: 'ask' }) }));
    const { sub } = await subscribed(c, channel, { delta: 'fossil' });
    assert.equal(sub._delta_negotiated, false);
    const received = nextEvent(sub, 'publication');
    await publishStates(channel, [7]);
    assert.deepEqual((await received).data, state(7));
  });
});
