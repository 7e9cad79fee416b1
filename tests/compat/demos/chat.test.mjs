// The chat demo in a real browser: people in their own browser contexts
// see each other arrive and leave, see who is typing, get messages as text
// (never as markup), and one whose network is cut is told so, then gets
// what was said meanwhile once it is back. A late joiner reads history.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { WAIT, oneNode, person, screenshotPath, textOf } from '../lib/demo.mjs';

const messagesOf = (page) => page.$$eval('#messages li:not(.system)', (items) => items.map((item) => item.textContent));
const membersOf = (page) => page.$$eval('#members li', (items) => items.map((item) => item.textContent));

describe('the chat demo', () => {
  const demo = oneNode({ network: true });

  test('people chat, see each other and who is typing, and one cut off catches up when back', async () => {
    const ann = await person(demo.browser, `${demo.node.url}/demos/chat.html?name=ann&room=rust`);
    const bob = await person(demo.browser, `${demo.network.url}/demos/chat.html?name=bob&room=rust`);
    await ann.waitForFunction(() => document.querySelectorAll('#members li').length === 2, WAIT);
    assert.deepEqual(await membersOf(ann), ['ann', 'bob']);
    await bob.waitForFunction(() => document.querySelectorAll('#members li').length === 2, WAIT);

    // Typing shows on the other page; the message arrives as text.
    await ann.type('#text', '<img src=x onerror="window.hacked=1"> hello bob');
    await bob.waitForFunction(() => document.getElementById('typing').textContent === 'ann is typing…', WAIT);
    await ann.click('#send button');
    await bob.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 1, WAIT);
    assert.deepEqual(await messagesOf(bob), ['ann: <img src=x onerror="window.hacked=1"> hello bob']);
    assert.equal(await bob.evaluate(() => window.hacked), undefined, 'markup in a message is shown, not run');
    await bob.type('#text', 'hi ann');
    await bob.keyboard.press('Enter');
    await ann.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 2, WAIT);

    // Bob's network goes down: his page says so; ann talks on.
    demo.network.cut();
    await bob.waitForFunction(() => !document.getElementById('banner').hidden, WAIT);
    assert.match(await textOf(bob, '#banner'), /reconnecting/);
    for (const text of ['are you there?', 'you missed this', 'and this']) {
      await ann.type('#text', text);
      await ann.keyboard.press('Enter');
    }
    await ann.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 5, WAIT);

    // Back: the banner goes, and the three messages arrive once each, in order.
    demo.network.restore();
    await bob.waitForFunction(() => document.getElementById('banner').hidden, WAIT);
    await bob.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 5, WAIT);
    assert.deepEqual(await messagesOf(bob), await messagesOf(ann));
    assert.deepEqual((await messagesOf(bob)).slice(2), ['ann: are you there?', 'ann: you missed this', 'ann: and this']);
    assert.doesNotMatch(await textOf(bob, '#messages'), /away too long/, 'recovered, not reloaded from history');

    // A late joiner reads the conversation from history.
    const cleo = await person(demo.browser, `${demo.node.url}/demos/chat.html?name=cleo&room=rust`);
    await cleo.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 5, WAIT);
    assert.deepEqual(await messagesOf(cleo), await messagesOf(ann));
    await ann.waitForFunction(() => document.querySelectorAll('#members li').length === 3, WAIT);
    const shot = screenshotPath('demo-chat.png');
    if (shot) await ann.screenshot({ path: shot });

    // Leaving: the others see bob go. (A "bob left" may be there already:
    // when bob's cut-off connection timed out before his new one joined.)
    const notesOfBobLeaving = (before) =>
      [...document.querySelectorAll('#messages li.system')].filter((li) => li.textContent === 'bob left').length > before;
    const leftBefore = await ann.evaluate(() =>
      [...document.querySelectorAll('#messages li.system')].filter((li) => li.textContent === 'bob left').length);
    await bob.browserContext().close();
    await ann.waitForFunction(notesOfBobLeaving, WAIT, leftBefore);
    assert.deepEqual(await membersOf(ann), ['ann', 'cleo']);
    for (const page of [ann, cleo]) assert.deepEqual(page.errors, [], 'no script errors');
    assert.deepEqual(bob.errors, []);
  });

  test('rooms are separate channels', async () => {
    const dana = await person(demo.browser, `${demo.node.url}/demos/chat.html?name=dana&room=lobby`);
    const eli = await person(demo.browser, `${demo.node.url}/demos/chat.html?name=eli&room=random`);
    await dana.waitForFunction(() => document.querySelectorAll('#members li').length === 1, WAIT);
    await eli.waitForFunction(() => document.querySelectorAll('#members li').length === 1, WAIT);
    await dana.type('#text', 'only for the lobby');
    await dana.keyboard.press('Enter');
    await dana.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 1, WAIT);
    // Eli moves to the lobby: its history shows the message, and dana sees eli arrive.
    await eli.click('button[data-room="lobby"]');
    await eli.waitForFunction(() => document.querySelectorAll('#messages li:not(.system)').length === 1, WAIT);
    assert.deepEqual(await messagesOf(eli), ['dana: only for the lobby']);
    await dana.waitForFunction(() => document.querySelectorAll('#members li').length === 2, WAIT);
    assert.deepEqual([...dana.errors, ...eli.errors], []);
  });
});
