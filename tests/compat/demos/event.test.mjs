// The live event demo in a real browser, on two nodes over Redis: the host
// on one node runs a poll and a quiz, an audience spread over both nodes
// votes (one changes its mind), asks and upvotes questions, and every
// page, and one that opens late, shows the same counts.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { WAIT, demoSecrets, launchBrowser, person, screenshotPath, startDemo } from '../lib/demo.mjs';
import { startRedis } from '../lib/redis.mjs';

/** What a page shows of each poll: question, counts per option, and the total line. */
const pollsOf = (page) => page.$$eval('.poll', (polls) => polls.map((poll) => ({
  question: poll.querySelector('h4').textContent,
  counts: Object.fromEntries([...poll.querySelectorAll('.option')].map((option) => [option.querySelector('.label').textContent, Number(option.querySelector('.count').textContent)])),
  correct: [...poll.querySelectorAll('.option.correct .label')].map((label) => label.textContent),
})));
const questionsOf = (page) => page.$$eval('.question', (items) => items.map((item) => item.querySelector('.text').textContent + ' ' + item.querySelector('button').textContent));

async function vote(page, question, option) {
  await page.waitForFunction((q, o) => [...document.querySelectorAll('.poll')].some((poll) => poll.querySelector('h4').textContent.endsWith(q)
    && [...poll.querySelectorAll('.option .label')].some((label) => label.textContent === o)), WAIT, question, option);
  await page.evaluate((q, o) => {
    const poll = [...document.querySelectorAll('.poll')].find((p) => p.querySelector('h4').textContent.endsWith(q));
    [...poll.querySelectorAll('.option')].find((option) => option.querySelector('.label').textContent === o).querySelector('button').click();
  }, question, option);
}

describe('the live event demo on two nodes', () => {
  let redis;
  let nodes;
  let browser;

  before(async () => {
    redis = await startRedis();
    const secrets = demoSecrets();
    nodes = [await startDemo({ secrets, redis: redis.url, feeds: false }), await startDemo({ secrets, redis: redis.url, feeds: false })];
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await Promise.allSettled((nodes ?? []).map((node) => node.stop()));
    await redis?.stop();
  });

  test('a poll, a quiz and questions, counted the same on every page of both nodes', async () => {
    const [a, b] = nodes;
    const page = (node, query) => person(browser, `${node.url}/demos/event.html?event=launch&${query}`);
    const host = await page(a, 'role=host&name=hana');
    await host.waitForFunction(() => window.demo.state().host === 'hana', WAIT);
    const audience = [await page(b, 'name=ivan'), await page(b, 'name=jo'), await page(a, 'name=kim')];

    // A poll: ivan changes his mind, so two for Rust and one for Go.
    await host.type('#question', 'Best language?');
    await host.type('#options', 'Rust, Go, <b>Zig</b>');
    await host.click('#new-poll button');
    await vote(audience[0], 'Best language?', 'Go');
    await vote(audience[1], 'Best language?', 'Rust');
    await vote(audience[2], 'Best language?', 'Go');
    await audience[0].waitForFunction(() => document.querySelector('.option.mine .label')?.textContent === 'Go', WAIT);
    await vote(audience[0], 'Best language?', 'Rust');
    const expected = { question: 'Poll: Best language?', counts: { Rust: 2, Go: 1, '<b>Zig</b>': 0 }, correct: [] };
    for (const viewer of [host, ...audience]) {
      await viewer.waitForFunction(() => document.querySelector('.poll p').textContent.startsWith('3 votes')
        && document.querySelector('.poll .option .count').textContent === '2', WAIT);
      assert.deepEqual(await pollsOf(viewer), [expected]);
    }

    // Questions with markup stay text; upvotes order them.
    await audience[1].type('#ask-text', 'When is <script>window.hacked=1</script> v2 out?');
    await audience[1].keyboard.press('Enter');
    await audience[2].type('#ask-text', 'Is there a free tier?');
    await audience[2].keyboard.press('Enter');
    for (const voter of [audience[0], audience[1]]) {
      await voter.waitForFunction(() => document.querySelectorAll('.question').length === 2, WAIT);
      await voter.evaluate(() => [...document.querySelectorAll('.question')].find((q) => q.textContent.includes('free tier')).querySelector('button').click());
    }
    await host.waitForFunction(() => document.querySelector('.question button')?.textContent === '▲ 2', WAIT);
    assert.deepEqual(await questionsOf(host), ['Is there a free tier? — kim ▲ 2', 'When is <script>window.hacked=1</script> v2 out? — jo ▲ 0']);

    // A quiz: its answer shows only when the host closes it.
    await host.type('#question', 'Which port does Herald use by default?');
    await host.type('#options', '8000, 80, 6379');
    await host.click('#quiz');
    await host.click('#new-poll button');
    await vote(audience[0], 'Herald use by default?', '8000');
    await vote(audience[1], 'Herald use by default?', '6379');
    await host.waitForFunction(() => document.querySelector('.poll p').textContent.startsWith('2 votes'), WAIT);
    assert.deepEqual((await pollsOf(audience[2]))[0].correct, [], 'no answer before the quiz closes');
    await host.evaluate(() => [...document.querySelector('.poll').querySelectorAll('button')].find((b) => b.textContent === 'Close').click());
    await audience[0].waitForFunction(() => document.querySelector('.poll p').textContent.includes('you got it right'), WAIT);
    await audience[1].waitForFunction(() => document.querySelector('.poll p').textContent.includes('not this time'), WAIT);
    assert.deepEqual((await pollsOf(audience[2]))[0].correct, ['8000']);
    const shot = screenshotPath('demo-event.png');
    if (shot) await host.screenshot({ path: shot });

    // A late joiner on the other node reads the same event from history.
    const late = await page(b, 'name=lou');
    await late.waitForFunction(() => document.querySelectorAll('.poll').length === 2 && document.querySelectorAll('.question').length === 2, WAIT);
    assert.deepEqual(await pollsOf(late), await pollsOf(host));
    assert.deepEqual(await questionsOf(late), await questionsOf(host));
    for (const viewer of [host, ...audience, late]) {
      assert.equal(await viewer.evaluate(() => window.hacked), undefined, 'markup in a question is shown, not run');
      assert.deepEqual(viewer.errors, [], 'no script errors');
    }
  });

  test('only the host of an event runs it: a poll from anyone else counts for nothing', async () => {
    const host = await person(browser, `${nodes[0].url}/demos/event.html?event=townhall&role=host&name=mo`);
    await host.waitForFunction(() => window.demo.state().host === 'mo', WAIT);
    const guest = await person(browser, `${nodes[1].url}/demos/event.html?event=townhall&name=ned`);
    await guest.waitForFunction(() => window.demo.state().host === 'mo', WAIT);
    await guest.evaluate(() => window.demo.act({ kind: 'poll', question: 'Fake poll', options: ['a', 'b'] }));
    await guest.evaluate(() => window.demo.act({ kind: 'ask', text: 'a real question' }));
    await host.waitForFunction(() => document.querySelectorAll('.question').length === 1, WAIT);
    assert.equal(await host.$$eval('.poll', (polls) => polls.length), 0);
  });
});
