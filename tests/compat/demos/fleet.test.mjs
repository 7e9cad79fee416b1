// The fleet tracking demo in a real browser: the demo's feed moves vans
// through the server API; every page draws them on the map from
// `fleet:all`, and following a van subscribes to that van's own channel
// (its panel fills at once from history) and leaves the one followed before.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { WAIT, oneNode, person, screenshotPath } from '../lib/demo.mjs';

const detailsOf = (page) => page.$$eval('#details dd', (items) => Object.fromEntries(items.map((dd) => [dd.dataset.field, dd.textContent])));
const vanAt = (page, id) => page.$eval(`[data-van="${id}"]`, (van) => van.getAttribute('transform'));
// A van moves a few times a second: a mouse click aimed at where it was
// can land on the street once a loaded machine is slow to send it, so the
// click goes to the van itself.
const follow = (page, id) => page.$eval(`[data-van="${id}"]`, (van) => van.dispatchEvent(new MouseEvent('click', { bubbles: true })));

describe('the fleet tracking demo', () => {
  const demo = oneNode({ feeds: true });

  test('every page shows the vans moving, and each follows a van of its own', async () => {
    const [one, two] = [await person(demo.browser, `${demo.node.url}/demos/fleet.html?name=ops1`), await person(demo.browser, `${demo.node.url}/demos/fleet.html?name=ops2`)];
    for (const page of [one, two]) await page.waitForFunction(() => document.querySelectorAll('[data-van]').length === 6, WAIT);
    const before = await vanAt(one, 1);
    await one.waitForFunction((was) => document.querySelector('[data-van="1"]').getAttribute('transform') !== was, WAIT, before);

    // Following van 3 shows its driver at once; van 4 replaces it.
    await follow(one, 3);
    await one.waitForFunction(() => document.querySelector('#details [data-field="driver"]')?.textContent === 'Linus', WAIT);
    await follow(two, 5);
    await two.waitForFunction(() => document.querySelector('#details [data-field="driver"]')?.textContent === 'Ken', WAIT);
    await follow(one, 4);
    await one.waitForFunction(() => document.querySelector('#details [data-field="driver"]')?.textContent === 'Margaret', WAIT);
    await one.waitForFunction(() => document.querySelector('.trail').getAttribute('points').split(' ').length >= 4, WAIT);
    const subscribed = await one.evaluate(() => Object.keys(window.demo.client.subscriptions()).sort());
    assert.deepEqual(subscribed, ['fleet:all', 'fleet:van-4'], 'the van followed before was left');
    assert.match((await detailsOf(one)).speed, /^\d+ km\/h$/);
    const shot = screenshotPath('demo-fleet.png');
    if (shot) await one.screenshot({ path: shot });
    assert.deepEqual([...one.errors, ...two.errors], []);
  });
});
