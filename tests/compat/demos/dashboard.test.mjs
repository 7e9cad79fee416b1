// The live dashboard demo in a real browser, on pusher-js: a page that
// opens gets the last metrics at once (a Pusher cache channel), and every
// open page redraws in place as the backend publishes through Herald's
// server API. The demo's own feed runs too, on a second node.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { WAIT, launchBrowser, person, screenshotPath, startDemo, textOf } from '../lib/demo.mjs';

const sample = (n) => ({ at: Date.UTC(2026, 11, 2, 9, 0, n), requests: 1000 + n, latency_p99: 40 + n, error_rate: 0.5, cpu: [10, 20 + n, 30], orders: 500 + n });

describe('the live dashboard demo', () => {
  let quiet;
  let fed;
  let browser;

  before(async () => {
    quiet = await startDemo({ feeds: false });
    fed = await startDemo();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await Promise.allSettled([quiet?.stop(), fed?.stop()]);
  });

  const publish = (node, n) => node.api('publish', { channel: 'cache-dashboard', data: sample(n), tags: { event: 'metrics' } });

  test('a new page shows the last metrics at once, and every page updates in place', async () => {
    assert.equal((await publish(quiet, 1)).error, undefined);
    const first = await person(browser, `${quiet.url}/demos/dashboard.html`);
    const second = await person(browser, `${quiet.url}/demos/dashboard.html`);
    for (const page of [first, second]) {
      await page.waitForFunction(() => window.demo.received.length === 1, WAIT);
      assert.equal(await textOf(page, '#requests'), '1,001', 'the cached value, with nothing published since');
    }
    for (let n = 2; n <= 4; n += 1) assert.equal((await publish(quiet, n)).error, undefined);
    for (const page of [first, second]) {
      await page.waitForFunction(() => window.demo.received.length === 4, WAIT);
      assert.deepEqual(await page.evaluate(() => window.demo.received.map((m) => m.requests)), [1001, 1002, 1003, 1004]);
      assert.equal(await textOf(page, '#latency_p99'), '44');
      assert.match(await textOf(page, '#cpu'), /node 2\s*24%/);
      assert.deepEqual(page.errors, []);
    }
  });

  test("the demo's own feed keeps a page moving", async () => {
    const page = await person(browser, `${fed.url}/demos/dashboard.html`);
    await page.waitForFunction(() => window.demo.received.length >= 8, WAIT);
    const times = await page.evaluate(() => window.demo.received.map((m) => m.at));
    assert.deepEqual(times, [...times].sort((x, y) => x - y), 'in the order published');
    const shot = screenshotPath('demo-dashboard.png');
    if (shot) {
      await page.waitForFunction(() => window.demo.received.length >= 60, { timeout: 30000 });
      await page.screenshot({ path: shot });
    }
    assert.deepEqual(page.errors, []);
  });
});
