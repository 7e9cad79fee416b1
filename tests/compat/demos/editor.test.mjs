// The collaborative editor demo in a real browser: several people type into
// one document at once and every page ends with the same text; one whose
// network is cut keeps typing, and once back, its edits and everyone
// else's meet; a late joiner reads the document from history; each page
// shows where the others' cursors are.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { WAIT, oneNode, person, screenshotPath, textOf } from '../lib/demo.mjs';

const textIn = (page) => page.$eval('#text', (area) => area.value);

/** Types `text` at `position` ('start' or 'end') of the page's document. */
async function typeAt(page, position, text) {
  await page.evaluate((where) => {
    const area = document.getElementById('text');
    area.focus();
    const at = where === 'start' ? 0 : area.value.length;
    area.setSelectionRange(at, at);
  }, position);
  await page.keyboard.type(text, { delay: 5 });
}

/** Waits until every page shows the same text, and returns it. */
async function converged(pages) {
  const deadline = Date.now() + WAIT.timeout;
  for (;;) {
    const texts = await Promise.all(pages.map(textIn));
    const models = await Promise.all(pages.map((page) => page.evaluate(() => window.demo.text())));
    if (new Set([...texts, ...models]).size === 1) return texts[0];
    if (Date.now() > deadline) assert.fail(`the pages did not converge: ${JSON.stringify(texts)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('the collaborative editor demo', () => {
  const demo = oneNode({ network: true });

  test('concurrent edits converge, a cut-off editor merges on return, and a late joiner catches up', async () => {
    const url = (base, name) => `${base}/demos/editor.html?doc=plan&name=${name}`;
    const ada = await person(demo.browser, url(demo.node.url, 'ada'));
    const ben = await person(demo.browser, url(demo.network.url, 'ben'));
    for (const page of [ada, ben]) await page.waitForFunction(() => document.getElementById('status').textContent === 'in sync', WAIT);

    // Both type at once, at opposite ends.
    await Promise.all([typeAt(ada, 'start', 'Ada writes first. '), typeAt(ben, 'end', 'Ben adds <i>this</i>.')]);
    const together = await converged([ada, ben]);
    assert.ok(together.includes('Ada writes first. ') && together.includes('Ben adds <i>this</i>.'), together);

    // Each sees the other's cursor.
    await ada.waitForFunction(() => document.querySelector('.caret[data-name="ben"]'), WAIT);
    await ben.waitForFunction(() => document.querySelector('.caret[data-name="ada"]'), WAIT);

    // Ben's network goes down; both keep typing.
    demo.network.cut();
    await ben.waitForFunction(() => !document.getElementById('banner').hidden, WAIT);
    await typeAt(ada, 'end', ' Ada, while Ben is away.');
    await typeAt(ben, 'start', 'Ben, offline: ');
    demo.network.restore();
    await ben.waitForFunction(() => document.getElementById('banner').hidden, WAIT);
    const merged = await converged([ada, ben]);
    for (const part of ['Ada writes first. ', 'Ben adds <i>this</i>.', ' Ada, while Ben is away.', 'Ben, offline: ']) {
      assert.ok(merged.includes(part), `${JSON.stringify(part)} is in ${JSON.stringify(merged)}`);
    }

    // A late joiner reads the document from history, then edits with the rest.
    const cal = await person(demo.browser, url(demo.node.url, 'cal'));
    await cal.waitForFunction(() => document.getElementById('status').textContent === 'in sync', WAIT);
    assert.equal(await converged([ada, ben, cal]), merged);
    await Promise.all([typeAt(cal, 'end', ' Cal was here.'), typeAt(ada, 'start', '# Plan\n')]);
    const final = await converged([ada, ben, cal]);
    assert.ok(final.startsWith('# Plan\n') && final.endsWith(' Cal was here.'), final);
    assert.deepEqual(await ada.$$eval('#editors li', (items) => items.map((item) => item.textContent)), ['ada', 'ben', 'cal']);
    const shot = screenshotPath('demo-editor.png');
    if (shot) await ada.screenshot({ path: shot });
    assert.equal(await textOf(ada, '#status'), 'in sync');
    for (const page of [ada, ben, cal]) assert.deepEqual(page.errors, [], 'no script errors');
  });
});
