// Herald's fallbacks in a real browser: Debian's chromium, headless, driven
// by puppeteer-core (no browser is downloaded). A page on its own origin
// (served by this test, no CDN) loads centrifuge-js's browser build from
// node_modules with the page's WebSocket removed, as where a proxy blocks
// it: centrifuge-js falls back to HTTP-streaming, and where that endpoint
// is not served, on to SSE. Messages arrive, HTML in them shows as text,
// and a cut stream recovers. A second page listens with a plain
// EventSource on the uni-directional SSE endpoint, and recovers through
// EventSource's own reconnect.
//
// With SCREENSHOTS_DIR=<dir> the test saves the screenshots the README shows.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import puppeteer from 'puppeteer-core';

import { defaultConfig, startHerald } from './lib/herald.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOTS = process.env.SCREENSHOTS_DIR;
const WAIT = { timeout: 15000 };
const here = path.dirname(fileURLToPath(import.meta.url));
const BUNDLE = readFileSync(path.join(here, 'node_modules/centrifuge/dist/centrifuge.js'));

const namespaces = {
  feed: { subscribe: 'authenticated', publish: 'subscribers', history_size: 50, history_ttl: '5m', force_recovery: true },
};

// The page: connects with the transports it is given, lists what arrives as text.
const FALLBACK_PAGE = `<!doctype html>
<meta charset="utf-8"><title>Herald fallback</title>
<style>body{font:15px system-ui;margin:24px}li{margin:4px 0}#state{font-weight:bold}</style>
<h1>Live feed <small id="transport"></small></h1>
<p>State: <span id="state">starting</span></p>
<ul id="messages"></ul>
<script src="/centrifuge.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const herald = params.get('herald');
  const client = new Centrifuge([
    { transport: 'websocket', endpoint: herald.replace('http', 'ws') + '/connection/websocket' },
    { transport: 'http_stream', endpoint: herald + '/connection/http_stream' },
    { transport: 'sse', endpoint: herald + '/connection/sse' },
  ], { token: params.get('token'), emulationEndpoint: herald + '/emulation', minReconnectDelay: 50, maxReconnectDelay: 300 });
  // What the client went through, for a failed test to show.
  window.events = [];
  const note = (what) => window.events.push(Math.round(performance.now()) + 'ms ' + what);
  client.on('state', (ctx) => { document.getElementById('state').textContent = ctx.newState; note('state ' + ctx.newState); });
  client.on('connected', (ctx) => { document.getElementById('transport').textContent = 'over ' + ctx.transport; note('connected over ' + ctx.transport); });
  client.on('disconnected', (ctx) => note('disconnected ' + ctx.code + ' ' + ctx.reason));
  client.on('error', (ctx) => note('error ' + ctx.type + ' ' + (ctx.error && ctx.error.message)));
  const sub = client.newSubscription(params.get('channel'));
  sub.on('state', (ctx) => note('subscription ' + ctx.newState));
  sub.on('error', (ctx) => note('subscription error ' + ctx.type + ' ' + (ctx.error && ctx.error.message)));
  window.received = [];
  sub.on('publication', (ctx) => {
    window.received.push(ctx.data.n);
    const item = document.createElement('li');
    item.textContent = '#' + ctx.data.n + ' ' + ctx.data.text;
    document.getElementById('messages').append(item);
  });
  sub.on('subscribed', (ctx) => {
    window.lastSubscribed = { recovered: ctx.recovered, wasRecovering: ctx.wasRecovering };
    note('subscribed ' + JSON.stringify(window.lastSubscribed));
  });
  sub.subscribe();
  client.connect();
  window.herald = client;
</script>`;

// The page that only listens: a plain EventSource, no SDK.
const UNI_PAGE = `<!doctype html>
<meta charset="utf-8"><title>Herald uni SSE</title>
<style>body{font:15px system-ui;margin:24px}</style>
<h1>Scores (EventSource)</h1>
<ul id="scores"></ul>
<script>
  const params = new URLSearchParams(location.search);
  const connect = JSON.stringify({ token: params.get('token') });
  const source = new EventSource(params.get('herald') + '/connection/uni_sse?cf_connect=' + encodeURIComponent(connect));
  window.pushes = [];
  const show = (channel, pub) => {
    const item = document.createElement('li');
    item.textContent = channel + ': ' + pub.data.home + ' - ' + pub.data.away;
    document.getElementById('scores').append(item);
  };
  window.connects = 0;
  source.onmessage = (event) => {
    const push = JSON.parse(event.data);
    window.pushes.push(push);
    if (push.connect) {
      window.connects += 1;
      for (const [channel, sub] of Object.entries(push.connect.subs)) (sub.publications || []).forEach((pub) => show(channel, pub));
    }
    if (push.pub) show(push.channel, push.pub);
  };
</script>`;

describe('fallbacks in a real browser', () => {
  let herald;
  let streamless;
  let site;
  let siteUrl;
  let browser;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
    herald = await startHerald({ channel: { namespaces } });
    // A node without the HTTP-streaming endpoint, where the client must go on to SSE.
    streamless = await startHerald({
      channel: { namespaces },
      client: { ...defaultConfig().client, transports: ['websocket', 'sse', 'uni_sse'] },
    });
    site = http.createServer((request, response) => {
      const { pathname } = new URL(request.url, 'http://site');
      const [type, body] =
        pathname === '/centrifuge.js'
          ? ['text/javascript', BUNDLE]
          : pathname === '/uni'
            ? ['text/html', UNI_PAGE]
            : ['text/html', FALLBACK_PAGE];
      response.writeHead(200, { 'content-type': type });
      response.end(body);
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
    siteUrl = `http://127.0.0.1:${site.address().port}`;
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    if (SCREENSHOTS) mkdirSync(SCREENSHOTS, { recursive: true });
  });

  after(async () => {
    await browser?.close();
    site?.close();
    await Promise.allSettled([herald?.stop(), streamless?.stop()]);
  });

  /** Waits until `condition` holds on `page`; on a timeout, says what the page saw. */
  async function waitOn(page, condition, what, wait = WAIT) {
    try {
      await page.waitForFunction(condition, wait);
    } catch (error) {
      const seen = await page
        .evaluate(() =>
          JSON.stringify({ state: window.herald?.state, received: window.received, pushes: window.pushes, events: window.events }),
        )
        .catch((e) => `nothing (the page did not answer: ${e.message})`);
      throw new Error(`waiting for ${what}: ${error.message}; the page saw ${seen}`);
    }
  }

  /** A page without WebSocket, connected to `node` for `channel`. */
  async function pageWithoutWebSocket(node, channel, user) {
    const page = await browser.newPage();
    await page.setViewport({ width: 900, height: 520 });
    await page.evaluateOnNewDocument(() => {
      delete window.WebSocket;
    });
    const query = new URLSearchParams({ herald: `http://127.0.0.1:${node.port}`, token: node.token({ user }), channel });
    await page.goto(`${siteUrl}/?${query}`);
    await waitOn(page, () => window.lastSubscribed !== undefined, 'the subscription');
    return page;
  }

  async function publish(node, channel, from, to) {
    for (let n = from; n <= to; n += 1) {
      await node.api('publish', { channel, data: { n, text: `<img src=x onerror="window.hacked=1"> message ${n}` } });
    }
  }

  test('without WebSocket the page connects over HTTP-streaming, shows messages as text and recovers a cut stream', async () => {
    const channel = 'feed:browser';
    const page = await pageWithoutWebSocket(herald, channel, 'viewer');
    assert.equal(await page.$eval('#transport', (el) => el.textContent), 'over http_stream');

    await publish(herald, channel, 1, 2);
    await waitOn(page, () => window.received.length === 2, 'publications 1-2');
    assert.equal(await page.evaluate(() => window.hacked), undefined, 'HTML in a message is not run');
    assert.match(await page.$eval('#messages', (el) => el.textContent), /<img src=x/);

    await page.evaluate(() => window.herald._transport.close());
    // The client may be connected again before a poll sees it away: what
    // shows the cut is its second `connecting`, in the page's event log.
    await waitOn(page, () => window.events.filter((e) => e.endsWith(' state connecting')).length >= 2, 'the cut to show');
    await publish(herald, channel, 3, 4);
    await waitOn(page, () => window.received.length === 4, 'publications 3-4, recovered');
    assert.deepEqual(await page.evaluate(() => window.received), [1, 2, 3, 4]);
    assert.deepEqual(await page.evaluate(() => window.lastSubscribed), { recovered: true, wasRecovering: true });
    if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, 'fallback-http-stream.png') });
    await page.close();
  });

  test('where HTTP-streaming is not served the page goes on to SSE', async () => {
    const channel = 'feed:browser-sse';
    const page = await pageWithoutWebSocket(streamless, channel, 'viewer');
    assert.equal(await page.$eval('#transport', (el) => el.textContent), 'over sse');
    await publish(streamless, channel, 1, 3);
    await waitOn(page, () => window.received.length === 3, 'publications 1-3 over SSE');
    assert.deepEqual(await page.evaluate(() => window.received), [1, 2, 3]);
    if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, 'fallback-sse.png') });
    await page.close();
  });

  test('a plain EventSource page listens on the uni-directional SSE endpoint', async () => {
    const channel = 'feed:scores';
    const page = await browser.newPage();
    await page.setViewport({ width: 900, height: 360 });
    const query = new URLSearchParams({
      herald: `http://127.0.0.1:${herald.port}`,
      token: herald.token({ user: 'fan', subscribe: [channel] }),
    });
    await page.goto(`${siteUrl}/uni?${query}`);
    await waitOn(page, () => window.pushes.some((push) => push.connect), 'the connect push');
    await herald.api('publish', { channel, data: { home: 1, away: 0 } });
    await herald.api('publish', { channel, data: { home: 1, away: 1 } });
    await waitOn(page, () => window.pushes.filter((push) => push.pub).length === 2, 'two publications');

    // The server ends the stream (asking the client to come back); EventSource
    // reconnects by itself, with the last event id it saw, and gets what it missed.
    await herald.api('disconnect', { user: 'fan', disconnect: { code: 4000, reason: 'moving you' } });
    await waitOn(page, () => window.pushes.some((push) => push.disconnect), 'the disconnect push');
    await herald.api('publish', { channel, data: { home: 2, away: 1 } });
    await waitOn(page, () => window.connects === 2, 'EventSource to reconnect', { timeout: 20000 });
    const recovered = await page.evaluate(() => window.pushes.filter((push) => push.connect)[1].connect.subs);
    assert.equal(recovered[channel].recovered, true, JSON.stringify(recovered));
    assert.deepEqual(await page.$$eval('#scores li', (items) => items.map((item) => item.textContent)), [
      `${channel}: 1 - 0`,
      `${channel}: 1 - 1`,
      `${channel}: 2 - 1`,
    ]);
    if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, 'uni-sse.png') });
    await page.close();
  });
});
