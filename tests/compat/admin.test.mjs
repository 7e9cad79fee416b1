// The admin UI, in a real browser: Debian's chromium, headless, driven by
// puppeteer-core (no browser is downloaded). Two herald nodes share one
// Redis; an operator logs in on node A, sees both nodes, watches a
// publication made through the API appear in the channel inspector's live
// tail, publishes from the form to a real centrifuge-js client on node B,
// and disconnects that client's user.
//
// With SCREENSHOTS_DIR=<dir> the test also runs traffic for a while so
// the charts have lines, and saves the screenshots the README shows.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import puppeteer from 'puppeteer-core';

import { defaultConfig, newClient, nextEvent, sleep, startHerald, subscribed } from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PASSWORD = 'operator-password-for-the-browser-test';
const SCREENSHOTS = process.env.SCREENSHOTS_DIR;
const WAIT = { timeout: 15000 };

function nodeConfig(redisUrl, name, shared) {
  return {
    engine: { type: 'redis', address: redisUrl, prefix: `herald-admin-${process.pid}` },
    client: shared.client,
    api: shared.api,
    node: { name },
    admin: { password: PASSWORD },
    channel: {
      namespaces: {
        chat: {
          subscribe: 'authenticated',
          publish: 'subscribers',
          presence: true,
          join_leave: true,
          history_size: 20,
          history_ttl: '5m',
        },
      },
    },
  };
}

/** The texts of the elements matching `selector`. */
function texts(page, selector) {
  return page.$$eval(selector, (nodes) => nodes.map((node) => node.textContent));
}

describe('the admin UI in a real browser', () => {
  let redis;
  let nodeA;
  let nodeB;
  let browser;
  let page;
  let client;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
    redis = await startRedis();
    const shared = defaultConfig();
    nodeA = await startHerald(nodeConfig(redis.url, 'node-a', shared));
    nodeB = await startHerald(nodeConfig(redis.url, 'node-b', shared));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1360, height: 1000 });
    if (SCREENSHOTS) mkdirSync(SCREENSHOTS, { recursive: true });
  });

  after(async () => {
    client?.disconnect();
    await browser?.close();
    await Promise.allSettled([nodeA?.stop(), nodeB?.stop()]);
    await redis?.stop();
  });

  const adminUrl = () => `http://127.0.0.1:${nodeA.port}/admin`;

  test('a wrong password is refused on the page, the right one logs in', async () => {
    await page.goto(adminUrl());
    await page.waitForSelector('#login-view:not([hidden])', WAIT);
    if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, 'admin-login.png') });

    await page.type('#password', 'not the password');
    await page.click('#login button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0, WAIT);
    assert.equal(await page.$eval('#login-error', (e) => e.textContent), 'wrong password');

    await page.$eval('#password', (input) => {
      input.value = '';
    });
    await page.type('#password', PASSWORD);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#app:not([hidden])', WAIT);
    const cookies = await page.cookies();
    const session = cookies.find((cookie) => cookie.name === 'herald_admin');
    assert.ok(session, 'a session cookie');
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, 'Strict');
    assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read the session');
  });

  test('both nodes of the cluster are listed', async () => {
    await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr').length === 2, WAIT);
    const names = (await page.$$eval('#nodes tbody tr', (rows) => rows.map((row) => row.dataset.node))).sort();
    assert.deepEqual(names, ['node-a', 'node-b']);
  });

  test('a publication made through the API appears in the channel inspector', async () => {
    // A real client on node B, present in chat:lobby.
    client = newClient(nodeB.url, { token: nodeB.token({ user: 'ada' }) });
    client.connect();
    await subscribed(client, 'chat:lobby');

    // The channel list is the cluster's: node A lists node B's channel.
    await page.waitForSelector('#channels tbody tr[data-channel="chat:lobby"]', WAIT);
    await page.click('#channels tbody tr[data-channel="chat:lobby"]');
    await page.waitForFunction(() => document.querySelector('#tail-state').textContent === '(live)', WAIT);
    await page.waitForFunction(() => document.querySelector('#presence').textContent.includes('ada'), WAIT);

    const reply = await nodeB.api('publish', { channel: 'chat:lobby', data: { text: 'hello from the API' } });
    assert.ok(reply.result, JSON.stringify(reply));
    await page.waitForFunction(() => document.querySelector('#tail').textContent.includes('hello from the API'), WAIT);
    await page.waitForFunction(
      () => document.querySelector('#history').textContent.includes('hello from the API'),
      WAIT,
    );
  });

  test('the publish form reaches a centrifuge-js client on the other node', async () => {
    const sub = client.getSubscription('chat:lobby');
    const received = nextEvent(sub, 'publication', { timeout: 15000 });
    await page.$eval('#publish-data', (area) => {
      area.value = '';
    });
    await page.type('#publish-data', '{"text": "hello from the form"}');
    await page.click('#publish button[type=submit]');
    const publication = await received;
    assert.deepEqual(publication.data, { text: 'hello from the form' });
    await page.waitForFunction(
      () => document.querySelector('#publish-result').textContent.startsWith('Published'),
      WAIT,
    );
    await page.waitForFunction(() => document.querySelector('#tail').textContent.includes('hello from the form'), WAIT);
  });

  test('the channel search narrows the list', async () => {
    await subscribed(client, 'chat:other');
    await page.waitForSelector('#channels tbody tr[data-channel="chat:other"]', WAIT);
    await page.type('#channel-search', 'lob');
    await page.waitForFunction(() => document.querySelectorAll('#channels tbody tr').length === 1, WAIT);
    assert.deepEqual(await texts(page, '#channels tbody tr td:first-child'), ['chat:lobby']);
  });

  test('screenshots of a busy cluster', { skip: !SCREENSHOTS && 'set SCREENSHOTS_DIR to take them' }, async () => {
    const until = Date.now() + 40000;
    let n = 0;
    while (Date.now() < until) {
      n += 1;
      await nodeB.api('publish', { channel: 'chat:lobby', data: { text: `tick ${n}`, n } });
      await sleep(20 + (n % 50));
    }
    await sleep(2500);
    await page.screenshot({ path: path.join(SCREENSHOTS, 'admin-overview.png'), fullPage: true });
  });

  test('disconnecting a user from the form disconnects its client', async () => {
    const gone = new Promise((resolve) => {
      client.once('disconnected', resolve);
      client.once('connecting', resolve);
    });
    await page.type('#disconnect-user', 'ada');
    await page.click('#disconnect button[type=submit]');
    await gone;
    await page.waitForFunction(
      () => document.querySelector('#disconnect-result').textContent.includes('ada'),
      WAIT,
    );
  });

  test('logging out ends the session', async () => {
    await page.click('#logout');
    await page.waitForSelector('#login-view:not([hidden])', WAIT);
    const status = await page.evaluate(async () => (await fetch('/admin/session')).status);
    assert.equal(status, 401);
  });
});
