#!/usr/bin/env node
// Turns herald-bench JSON results into a Markdown report with SVG charts.
//
//   node bench/report.mjs RESULT.json... [--out DIR]
//
// Writes DIR/report.md (DIR defaults to bench/results), one SVG chart of
// latency percentiles per latency-measuring scenario (fanout, chat), and one
// of fanout deliveries/s by subscriber count; prints the Markdown on stdout.
// A run's label is the file's "label", else its file name. A file
// `<name>.rss` beside `<name>.json` (a number, in KiB, as bench/compare
// writes) adds the server's RSS after the run to the tables.
//
// No dependencies: Node 20's standard library only.

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- arguments

function usage(message) {
  if (message) process.stderr.write(`report.mjs: ${message}\n`);
  process.stderr.write('usage: node bench/report.mjs RESULT.json... [--out DIR]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const files = [];
  let out = path.join(here, 'results');
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--out') {
      if (i + 1 >= argv.length) usage('--out needs a directory');
      out = argv[++i];
    } else if (arg.startsWith('--out=')) {
      out = arg.slice('--out='.length);
    } else if (arg === '-h' || arg === '--help') {
      usage();
    } else if (arg.startsWith('--')) {
      usage(`unknown option ${arg}`);
    } else {
      files.push(arg);
    }
  }
  if (files.length === 0) usage('give at least one result file');
  return { files, out };
}

// ---------------------------------------------------------------- loading

const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function readRss(jsonFile) {
  const rssFile = jsonFile.replace(/\.json$/i, '') + '.rss';
  if (rssFile === jsonFile || !fs.existsSync(rssFile)) return undefined;
  const match = /(\d+(?:\.\d+)?)/.exec(fs.readFileSync(rssFile, 'utf8'));
  return match ? Number(match[1]) : undefined;
}

function load(file) {
  const data = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (!isObject(data) || typeof data.scenario !== 'string' || !isObject(data.result)) {
    throw new Error('not a herald-bench result (no "scenario" and "result")');
  }
  const base = path.basename(file).replace(/\.json$/i, '');
  const args = isObject(data.args) ? data.args : {};
  const label = [data.label, args.label].find((l) => typeof l === 'string' && l.trim()) || base;
  return {
    file,
    base,
    label: label.trim(),
    scenario: data.scenario,
    version: data.version,
    cores: data.cores,
    cpu: isObject(data.machine) && typeof data.machine.cpu === 'string' ? data.machine.cpu : null,
    steal: isNumber(data.steal_seconds) ? data.steal_seconds : null,
    args,
    result: data.result,
    rssKib: readRss(file),
  };
}

// Connection URLs: flattened into args (`urls`) or nested (`connect.urls`).
function urlsOf(run) {
  const urls = run.args.urls ?? run.args.connect?.urls;
  return Array.isArray(urls) ? urls : [];
}

function argOf(run, name) {
  return run.args[name] ?? (isObject(run.args.connect) ? run.args.connect[name] : undefined);
}

// ---------------------------------------------------------------- formatting

function fmtInt(n) {
  return Math.round(n).toLocaleString('en-US');
}

function fmtNum(n) {
  if (!isNumber(n)) return n === undefined || n === null ? '' : String(n);
  const abs = Math.abs(n);
  if (Number.isInteger(n) || abs >= 100) return fmtInt(n);
  if (abs >= 1) return n.toFixed(1);
  return n.toFixed(2);
}

function fmtMs(ms) {
  if (!isNumber(ms)) return '';
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  return `${fmtInt(ms)} ms`;
}

function fmtKib(kib) {
  if (!isNumber(kib)) return '';
  if (kib >= 1024 * 1024) return `${(kib / 1024 / 1024).toFixed(2)} GiB`;
  if (kib >= 1024) return `${(kib / 1024).toFixed(1)} MiB`;
  return `${fmtNum(kib)} KiB`;
}

function fmtBytes(bytes) {
  if (!isNumber(bytes)) return '';
  return bytes >= 1024 ? fmtKib(bytes / 1024) : `${fmtInt(bytes)} B`;
}

function fmtCompact(n) {
  const abs = Math.abs(n);
  const trim = (x) => String(Number(x.toFixed(1)));
  if (abs >= 1e6) return `${trim(n / 1e6)}M`;
  if (abs >= 1e3) return `${trim(n / 1e3)}k`;
  return trim(n);
}

// How a generic field is named and shown, from its name.
const FIELD_NAMES = {
  connect_failures: 'connect failures',
  publish_failures: 'publish failures',
  expected_deliveries: 'expected deliveries',
  deliveries_per_second: 'deliveries/s',
  connects_per_second: 'connects/s',
  connect_rate: 'connect rate',
  connect_seconds: 'connect time (s)',
  seconds_to_all_reconnected: 'all reconnected after (s)',
  seconds_to_half_back: 'half back after (s)',
  seconds_to_90_percent_back: '90 % back after (s)',
  seconds_to_99_percent_back: '99 % back after (s)',
  not_recovered: 'not recovered',
  server_rss_kib_per_connection: 'server RSS per connection',
  rss_per_connection_kib: 'RSS per connection',
  server_rss_per_connection_bytes: 'server RSS per connection',
  server_idle_cpu_percent: 'server idle CPU',
};

function fieldName(key) {
  if (FIELD_NAMES[key]) return FIELD_NAMES[key];
  return key
    .replace(/_per_second$/, '/s')
    .replace(/_(ms|kib|bytes|percent)$/, '')
    .replace(/[._]/g, ' ');
}

function fieldFormat(key) {
  if (/(^|_)ms$/.test(key)) return fmtMs;
  if (/(^|_)kib(_|$)/.test(key)) return fmtKib;
  if (/(^|_)bytes(_|$)/.test(key)) return fmtBytes;
  if (/(^|_)percent(_|$)/.test(key)) return (v) => (isNumber(v) ? `${v.toFixed(1)} %` : '');
  return fmtNum;
}

// ---------------------------------------------------------------- tables

// A column: header, value of a run (undefined when it has none), format.
function col(header, get, format = fmtNum) {
  return { header, get, format };
}

function markdownTable(columns, runs) {
  const shown = columns.filter((c) => runs.some((run) => c.get(run) !== undefined && c.get(run) !== null));
  const seen = new Map();
  for (const c of shown) seen.set(c.header, (seen.get(c.header) ?? 0) + 1);
  for (const c of shown) if (seen.get(c.header) > 1 && c.key) c.header = `${c.header} (${c.key})`;
  const cell = (text) => String(text).replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\n/g, ' ');
  const lines = [
    `| ${shown.map((c) => cell(c.header)).join(' | ')} |`,
    `|${shown.map(() => '---').join('|')}|`,
  ];
  for (const run of runs) {
    lines.push(`| ${shown.map((c) => {
      const value = c.get(run);
      return cell(value === undefined || value === null ? '—' : c.format(value, run));
    }).join(' | ')} |`);
  }
  return lines.join('\n');
}

// Numeric fields of `result` (and of its nested objects, one level down)
// that no other column shows.
function genericColumns(runs, skip) {
  const keys = [];
  const add = (key) => {
    if (!keys.includes(key)) keys.push(key);
  };
  for (const run of runs) {
    for (const [key, value] of Object.entries(run.result)) {
      if (skip.has(key)) continue;
      if (isNumber(value)) add(key);
      else if (isObject(value)) {
        for (const [inner, v] of Object.entries(value)) if (isNumber(v) && !skip.has(`${key}.${inner}`)) add(`${key}.${inner}`);
      }
    }
  }
  return keys.map((key) => {
    const [outer, inner] = key.split('.');
    const get = (run) => {
      const value = inner === undefined ? run.result[outer] : run.result[outer]?.[inner];
      return isNumber(value) ? value : undefined;
    };
    return { ...col(fieldName(key), get, fieldFormat(inner ?? outer)), key };
  });
}

// One column of every numeric anomaly count, like "lost / duplicated /
// reordered" = "0 / 0 / 0" (whatever fields the files have).
function anomalyColumns(runs, source = (run) => run.result.anomalies) {
  const keys = [];
  for (const run of runs) {
    const anomalies = source(run);
    if (!isObject(anomalies)) continue;
    for (const [key, value] of Object.entries(anomalies)) if (isNumber(value) && !keys.includes(key)) keys.push(key);
  }
  if (keys.length === 0) return [];
  const get = (run) => {
    const anomalies = source(run);
    if (!isObject(anomalies)) return undefined;
    return keys.map((key) => (isNumber(anomalies[key]) ? fmtInt(anomalies[key]) : '—')).join(' / ');
  };
  return [col(keys.join(' / '), get, String)];
}

function latencyColumns() {
  const pct = (key) => (run) => {
    const latency = run.result.latency;
    return isObject(latency) && isNumber(latency[key]) && (latency.samples ?? 1) > 0 ? latency[key] : undefined;
  };
  return [
    col('p50', pct('p50_ms'), fmtMs),
    col('p90', pct('p90_ms'), fmtMs),
    col('p99', pct('p99_ms'), fmtMs),
    col('p99.9', pct('p999_ms'), fmtMs),
    col('max', pct('max_ms'), fmtMs),
  ];
}

const labelColumn = col('run', (run) => run.label, String);
const protocolColumn = col('protocol', (run) => argOf(run, 'protocol') ?? 'centrifuge', String);
// Shown only when some run used several URLs (a cluster).
const nodesColumn = (runs) =>
  runs.some((run) => urlsOf(run).length > 1) ? [col('nodes', (run) => urlsOf(run).length || undefined)] : [];
const rssColumn = col('server RSS after', (run) => run.rssKib, fmtKib);
const hasProtocol = (runs) => runs.some((run) => argOf(run, 'protocol') !== undefined);

function deliveredColumn(run) {
  const { delivered, expected_deliveries: expected } = run.result;
  if (!isNumber(delivered)) return undefined;
  return isNumber(expected) ? `${fmtInt(delivered)} / ${fmtInt(expected)}` : fmtInt(delivered);
}

// The main table, then one of the numbers it leaves out, if any.
function withExtras(table, runs, skip) {
  const extras = genericColumns(runs, skip);
  if (extras.length === 0) return table;
  return `${table}\n\nOther fields of the same runs:\n\n${markdownTable([labelColumn, ...extras], runs)}`;
}

/** A table of runs that deliver messages: their own argument columns, then
 * `countField` (what was sent), deliveries, latency and anomalies. */
function deliveryTable(runs, argColumns, countField) {
  const skip = new Set(['delivered', 'expected_deliveries', 'deliveries_per_second', countField, 'latency', 'anomalies']);
  const columns = [
    labelColumn,
    ...(hasProtocol(runs) ? [protocolColumn] : []),
    ...nodesColumn(runs),
    ...argColumns,
    col(countField, (run) => run.result[countField]),
    col('delivered / expected', deliveredColumn, String),
    col('deliveries/s', (run) => run.result.deliveries_per_second, fmtInt),
    ...latencyColumns(),
    ...anomalyColumns(runs),
    rssColumn,
  ];
  return withExtras(markdownTable(columns, runs), runs, skip);
}

function fanoutTable(runs) {
  const args = [
    col('subscribers', (run) => run.args.subscribers),
    col('channels', (run) => run.args.channels),
    col('publications/s', (run) => run.args.rate),
    col('payload', (run) => run.args.payload_bytes, fmtBytes),
    col('duration', (run) => run.args.duration, String),
  ];
  return deliveryTable(runs, args, 'published');
}

function chatTable(runs) {
  const args = [
    col('rooms', (run) => run.args.rooms),
    col('members per room', (run) => run.args.members_per_room),
    col('messages/s per member', (run) => run.args.rate_per_member),
    col('duration', (run) => run.args.duration, String),
  ];
  return deliveryTable(runs, args, 'sent');
}

// Scalars from args worth a column, for scenarios known only loosely.
function argColumns(runs, names) {
  return names.map(([name, header, format]) => col(header, (run) => {
    const value = argOf(run, name);
    return isNumber(value) || typeof value === 'string' ? value : undefined;
  }, format ?? ((v) => (isNumber(v) ? fmtNum(v) : String(v)))));
}

// Known fields first, in this order; the rest of the numbers after them.
function orderedResultColumns(runs, first) {
  const columns = first.map((key) => ({
    ...col(fieldName(key), (run) => (isNumber(run.result[key]) ? run.result[key] : undefined), fieldFormat(key)),
    key,
  }));
  return [...columns, ...genericColumns(runs, new Set([...first, 'anomalies', 'latency']))];
}

function connectionsTable(runs) {
  const columns = [
    labelColumn,
    ...(hasProtocol(runs) ? [protocolColumn] : []),
    ...nodesColumn(runs),
    ...argColumns(runs, [['count', 'connections asked'], ['hold', 'hold'], ['connect_rate', 'connect rate asked']]),
    ...orderedResultColumns(runs, ['connected', 'connect_failures', 'connect_seconds', 'connects_per_second', 'connect_rate']),
    ...latencyColumns(),
    ...anomalyColumns(runs),
    rssColumn,
  ];
  return markdownTable(columns, runs);
}

function stormTable(runs) {
  const columns = [
    labelColumn,
    ...(hasProtocol(runs) ? [protocolColumn] : []),
    ...nodesColumn(runs),
    ...argColumns(runs, [['channels', 'channels'], ['rate', 'publications/s'], ['storm_after', 'storm after'], ['publish_for', 'published for']]),
    ...orderedResultColumns(runs, [
      'clients', 'dropped', 'reconnected', 'seconds_to_half_back', 'seconds_to_90_percent_back',
      'seconds_to_99_percent_back', 'seconds_to_all_reconnected', 'not_recovered', 'lost',
      'published', 'expected_deliveries', 'delivered',
    ]),
    ...latencyColumns(),
    ...anomalyColumns(runs),
    rssColumn,
  ];
  return markdownTable(columns, runs);
}

function genericTable(runs) {
  const argNames = [];
  for (const run of runs) {
    for (const [key, value] of Object.entries(run.args)) {
      if ((isNumber(value) || typeof value === 'string') && !argNames.includes(key)) argNames.push(key);
    }
  }
  const columns = [
    labelColumn,
    ...argColumns(runs, argNames.map((name) => [name, name.replace(/_/g, ' ')])),
    ...orderedResultColumns(runs, []),
    ...latencyColumns(),
    ...anomalyColumns(runs),
    rssColumn,
  ];
  return markdownTable(columns, runs);
}

// ---------------------------------------------------------------- SVG

const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';
const INK = '#222';
const GRID = '#ddd';
const GRID_MINOR = '#f0f0f0';
// Distinct series colours (Okabe–Ito, then a few more).
const SERIES_COLORS = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442', '#000000', '#8c564b', '#7f7f7f'];
const PERCENTILES = [
  { key: 'p50_ms', name: 'p50', color: '#9ecae1' },
  { key: 'p90_ms', name: 'p90', color: '#4a90c8' },
  { key: 'p99_ms', name: 'p99', color: '#1d5a99' },
  { key: 'p999_ms', name: 'p99.9', color: '#0b2e59' },
  { key: 'max_ms', name: 'max', color: '#e45756' },
];

function esc(text) {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

const r1 = (n) => Math.round(n * 10) / 10;
// Rough width of a text in this font, for layout.
const textWidth = (text, size) => String(text).length * size * 0.6;

function text(x, y, content, { size = 12, anchor = 'start', weight, fill = INK, rotate, baseline } = {}) {
  const attrs = [`x="${r1(x)}"`, `y="${r1(y)}"`, `font-size="${size}"`, `fill="${fill}"`];
  if (anchor !== 'start') attrs.push(`text-anchor="${anchor}"`);
  if (weight) attrs.push(`font-weight="${weight}"`);
  if (baseline) attrs.push(`dominant-baseline="${baseline}"`);
  if (rotate) attrs.push(`transform="rotate(${rotate} ${r1(x)} ${r1(y)})"`);
  return `<text ${attrs.join(' ')}>${esc(content)}</text>`;
}

function line(x1, y1, x2, y2, stroke, width = 1, extra = '') {
  return `<line x1="${r1(x1)}" y1="${r1(y1)}" x2="${r1(x2)}" y2="${r1(y2)}" stroke="${stroke}" stroke-width="${width}"${extra}/>`;
}

function svgDocument(width, height, title, body) {
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.ceil(width)}" height="${Math.ceil(height)}" viewBox="0 0 ${Math.ceil(width)} ${Math.ceil(height)}" ${FONT}>`,
    `<title>${esc(title)}</title>`,
    `<rect x="0" y="0" width="${Math.ceil(width)}" height="${Math.ceil(height)}" fill="#ffffff"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

// A log scale over [lo, hi] (powers of ten around the data).
function logScale(values, floor) {
  const positive = values.filter((v) => isNumber(v) && v > 0);
  const min = Math.max(floor, Math.min(...positive));
  const max = Math.max(min, ...positive);
  let lo = 10 ** Math.floor(Math.log10(min));
  let hi = 10 ** Math.ceil(Math.log10(max));
  if (hi <= lo) hi = lo * 10;
  return {
    lo,
    hi,
    at: (v, start, end) => {
      const clamped = Math.min(hi, Math.max(lo, v));
      return start + ((Math.log10(clamped) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (end - start);
    },
    // Major ticks at each power of ten; minor at 2× and 5×.
    ticks() {
      const ticks = [];
      for (let decade = lo; decade <= hi * 1.0001; decade *= 10) {
        ticks.push({ value: decade, major: true });
        if (decade * 10 <= hi * 1.0001) ticks.push({ value: decade * 2, major: false }, { value: decade * 5, major: false });
      }
      return ticks;
    },
  };
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

function linearScale(lo, hi, count = 5) {
  if (hi <= lo) hi = lo + 1;
  const step = niceStep(hi - lo, count);
  const niceLo = Math.floor(lo / step) * step;
  const niceHi = Math.ceil(hi / step) * step;
  return {
    lo: niceLo,
    hi: niceHi,
    at: (v, start, end) => start + ((v - niceLo) / (niceHi - niceLo)) * (end - start),
    ticks() {
      const ticks = [];
      for (let v = niceLo; v <= niceHi + step / 1000; v += step) ticks.push({ value: Number(v.toPrecision(12)), major: true });
      return ticks;
    },
  };
}

function fmtMsTick(ms) {
  if (ms >= 1000) return `${fmtCompact(ms / 1000)} s`;
  if (ms >= 1) return `${fmtCompact(ms)} ms`;
  return `${Number(ms.toPrecision(2))} ms`;
}

// What tells runs of one scenario apart, besides the label.
function runDetail(run) {
  const a = run.args;
  if (run.scenario === 'fanout') {
    const parts = [];
    if (isNumber(a.subscribers)) parts.push(`${fmtCompact(a.subscribers)} subs`);
    if (isNumber(a.channels) && a.channels !== 1) parts.push(`${fmtCompact(a.channels)} ch`);
    if (isNumber(a.rate)) parts.push(`${fmtCompact(a.rate)}/s`);
    return parts.join(', ');
  }
  if (run.scenario === 'chat') {
    const parts = [];
    if (isNumber(a.rooms) && isNumber(a.members_per_room)) parts.push(`${a.rooms}×${a.members_per_room}`);
    if (isNumber(a.rate_per_member)) parts.push(`${fmtCompact(a.rate_per_member)}/s each`);
    return parts.join(', ');
  }
  return '';
}

function latencyChart(scenario, runs) {
  const measured = runs.filter((run) => {
    const latency = run.result.latency;
    return isObject(latency) && (latency.samples ?? 1) > 0 && PERCENTILES.some((p) => isNumber(latency[p.key]) && latency[p.key] > 0);
  });
  if (measured.length === 0) return null;

  const values = measured.flatMap((run) => PERCENTILES.map((p) => run.result.latency[p.key]));
  const scale = logScale(values, 0.001);
  const bar = 16;
  const barGap = 2;
  const groupInner = PERCENTILES.length * bar + (PERCENTILES.length - 1) * barGap;
  const groupWidth = groupInner + 36;
  const labelSize = 11;
  const names = measured.map((run) => run.label);
  const details = measured.map(runDetail);
  const widest = Math.max(...names.map((n) => textWidth(n, labelSize)), ...details.map((d) => textWidth(d, labelSize - 1)));
  const rotateLabels = widest > groupWidth - 6;
  // Rotated, a run's name and detail share one line.
  const rotated = measured.map((_, g) => (details[g] ? `${names[g]} (${details[g]})` : names[g]));
  const longest = rotateLabels ? Math.max(...rotated.map((t) => textWidth(t, labelSize))) : 0;
  const sin = Math.sin((35 * Math.PI) / 180);
  const cos = Math.cos((35 * Math.PI) / 180);
  const left = Math.max(70, longest * cos - groupWidth / 2 + 10);
  const right = 20;
  const top = 70;
  const plotHeight = 300;
  const bottom = rotateLabels ? 40 + longest * sin : 70;
  const legendWidth = PERCENTILES.length * 70;
  const title = `${scenario}: latency percentiles per run (log scale)`;
  const plotWidth = Math.max(measured.length * groupWidth, legendWidth, 360);
  const width = Math.max(left + plotWidth + right, 16 + textWidth(title, 15) + 20);
  const plotRight = width - right;
  // Groups sit in the middle of the plot when they do not fill it.
  const groupsLeft = left + (plotRight - left - measured.length * groupWidth) / 2;
  const height = top + plotHeight + bottom;
  const y = (v) => scale.at(v, top + plotHeight, top);

  const body = [];
  body.push(text(16, 24, title, { size: 15, weight: 'bold' }));
  // Legend.
  PERCENTILES.forEach((p, i) => {
    const x = left + i * 70;
    body.push(`<rect x="${x}" y="36" width="12" height="12" fill="${p.color}"/>`);
    body.push(text(x + 17, 46, p.name, { size: 12 }));
  });
  // Grid and y axis.
  for (const tick of scale.ticks()) {
    const ty = y(tick.value);
    body.push(line(left, ty, plotRight, ty, tick.major ? GRID : GRID_MINOR));
    const decades = Math.log10(scale.hi / scale.lo);
    if (tick.major || decades <= 2) {
      body.push(line(left - 4, ty, left, ty, INK));
      body.push(text(left - 7, ty + 4, fmtMsTick(tick.value), { size: tick.major ? 11 : 9, anchor: 'end', fill: tick.major ? INK : '#666' }));
    }
  }
  body.push(line(left, top, left, top + plotHeight, INK));
  body.push(line(left, top + plotHeight, plotRight, top + plotHeight, INK));
  body.push(text(left - 52, top + plotHeight / 2, 'latency (ms, log scale)', { size: 12, anchor: 'middle', rotate: -90 }));

  measured.forEach((run, g) => {
    const groupX = groupsLeft + g * groupWidth + (groupWidth - groupInner) / 2;
    PERCENTILES.forEach((p, i) => {
      const value = run.result.latency[p.key];
      if (!isNumber(value)) return;
      const x = groupX + i * (bar + barGap);
      const barTop = y(value);
      const h = Math.max(1, top + plotHeight - barTop);
      body.push(`<rect x="${r1(x)}" y="${r1(top + plotHeight - h)}" width="${bar}" height="${r1(h)}" fill="${p.color}"><title>${esc(`${run.label} ${p.name}: ${fmtMs(value)}`)}</title></rect>`);
      body.push(text(x + bar / 2 + 3, top + plotHeight - h - 3, fmtMs(value).replace(' ms', ''), { size: 9, rotate: -90, fill: '#333' }));
    });
    const cx = groupsLeft + g * groupWidth + groupWidth / 2;
    const ly = top + plotHeight + 16;
    if (rotateLabels) {
      body.push(text(cx, ly, rotated[g], { size: labelSize, anchor: 'end', rotate: -35 }));
    } else {
      body.push(text(cx, ly, names[g], { size: labelSize, anchor: 'middle' }));
      if (details[g]) body.push(text(cx, ly + 14, details[g], { size: labelSize - 1, anchor: 'middle', fill: '#555' }));
    }
  });
  body.push(text(plotRight, height - 8, 'bar labels in ms; from the scheduled send time to receipt', { size: 10, anchor: 'end', fill: '#666' }));
  return svgDocument(width, height, title, body);
}

// Fanout runs as lines: one per label (split by publication rate when a
// label was run at several rates), points sorted by subscribers.
function throughputSeries(runs) {
  const usable = runs.filter((run) => isNumber(run.args.subscribers) && isNumber(run.result.deliveries_per_second));
  const byLabel = new Map();
  for (const run of usable) {
    if (!byLabel.has(run.label)) byLabel.set(run.label, []);
    byLabel.get(run.label).push(run);
  }
  const series = [];
  for (const [label, group] of byLabel) {
    const rates = [...new Set(group.map((run) => run.args.rate))];
    const split = rates.length > 1;
    for (const rate of rates) {
      const points = group
        .filter((run) => !split || run.args.rate === rate)
        .map((run) => ({ x: run.args.subscribers, y: run.result.deliveries_per_second, run }))
        .sort((a, b) => a.x - b.x || a.y - b.y);
      series.push({ name: split ? `${label} @ ${fmtCompact(rate)} pub/s` : label, points });
      if (!split) break;
    }
  }
  return series;
}

// With a single subscriber count there are no lines to draw: one bar per
// run instead.
function throughputBars(series) {
  const bars = series.flatMap((s, i) => s.points.map((p) => ({ name: s.name, value: p.y, color: SERIES_COLORS[i % SERIES_COLORS.length], run: p.run })));
  const scale = linearScale(0, Math.max(...bars.map((b) => b.value)) * 1.1);
  const slot = 90;
  const barWidth = 44;
  const labelSize = 11;
  const widest = Math.max(...bars.map((b) => textWidth(b.name, labelSize)));
  const rotate = widest > slot - 6;
  const left = 80;
  const top = 50;
  const plotHeight = 300;
  const bottom = rotate ? 40 + widest * Math.sin((35 * Math.PI) / 180) : 50;
  const title = `fanout: deliveries per second at ${fmtInt(bars[0].run.args.subscribers)} subscribers`;
  const plotWidth = Math.max(bars.length * slot, 240);
  const width = Math.max(left + plotWidth + 20, 16 + textWidth(title, 15) + 20);
  const height = top + plotHeight + bottom;
  const y = (v) => scale.at(v, top + plotHeight, top);
  const body = [text(16, 26, title, { size: 15, weight: 'bold' })];
  for (const tick of scale.ticks()) {
    const ty = y(tick.value);
    body.push(line(left, ty, left + plotWidth, ty, GRID));
    body.push(line(left - 4, ty, left, ty, INK));
    body.push(text(left - 7, ty + 4, fmtCompact(tick.value), { size: 11, anchor: 'end' }));
  }
  body.push(line(left, top, left, top + plotHeight, INK));
  body.push(line(left, top + plotHeight, left + plotWidth, top + plotHeight, INK));
  body.push(text(left - 55, top + plotHeight / 2, 'deliveries per second', { size: 12, anchor: 'middle', rotate: -90 }));
  const start = left + (plotWidth - bars.length * slot) / 2;
  bars.forEach((b, i) => {
    const cx = start + i * slot + slot / 2;
    const by = y(b.value);
    const detail = `${b.name}: ${fmtCompact(b.run.args.rate)} pub/s → ${fmtInt(b.value)} deliveries/s`;
    body.push(`<rect x="${r1(cx - barWidth / 2)}" y="${r1(by)}" width="${barWidth}" height="${r1(top + plotHeight - by)}" fill="${b.color}"><title>${esc(detail)}</title></rect>`);
    body.push(text(cx, by - 5, fmtInt(b.value), { size: 10, anchor: 'middle' }));
    if (rotate) body.push(text(cx, top + plotHeight + 16, b.name, { size: labelSize, anchor: 'end', rotate: -35 }));
    else body.push(text(cx, top + plotHeight + 16, b.name, { size: labelSize, anchor: 'middle' }));
  });
  return svgDocument(width, height, title, body);
}

function throughputChart(runs) {
  const series = throughputSeries(runs);
  if (series.length === 0) return null;
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  if (new Set(xs).size === 1) return throughputBars(series);
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const minX = Math.min(...xs);
  const maxX = Math.max(...xs);
  const useLog = minX > 0 && maxX / minX >= 10;
  const xScale = useLog ? logScale(xs, 1) : linearScale(minX === maxX ? 0 : Math.min(0, minX), minX === maxX ? maxX * 2 : maxX);
  const yScale = linearScale(0, Math.max(...ys) * 1.05);

  const left = 80;
  const top = 50;
  const plotWidth = 520;
  const plotHeight = 320;
  const legendX = left + plotWidth + 24;
  const legendWidth = Math.max(...series.map((s) => textWidth(s.name, 12))) + 40;
  const width = legendX + legendWidth + 10;
  const height = Math.max(top + plotHeight + 60, top + series.length * 20 + 20);
  const x = (v) => xScale.at(v, left, left + plotWidth);
  const y = (v) => yScale.at(v, top + plotHeight, top);
  const title = 'fanout: deliveries per second by subscriber count';

  const body = [];
  body.push(text(16, 26, title, { size: 15, weight: 'bold' }));
  for (const tick of yScale.ticks()) {
    const ty = y(tick.value);
    body.push(line(left, ty, left + plotWidth, ty, GRID));
    body.push(line(left - 4, ty, left, ty, INK));
    body.push(text(left - 7, ty + 4, fmtCompact(tick.value), { size: 11, anchor: 'end' }));
  }
  const decades = useLog ? Math.log10(xScale.hi / xScale.lo) : 0;
  for (const tick of xScale.ticks()) {
    const tx = x(tick.value);
    body.push(line(tx, top, tx, top + plotHeight, tick.major ? GRID : GRID_MINOR));
    if (tick.major || decades <= 2) {
      body.push(line(tx, top + plotHeight, tx, top + plotHeight + 4, INK));
      body.push(text(tx, top + plotHeight + 17, fmtCompact(tick.value), { size: tick.major ? 11 : 9, anchor: 'middle', fill: tick.major ? INK : '#666' }));
    }
  }
  body.push(line(left, top, left, top + plotHeight, INK));
  body.push(line(left, top + plotHeight, left + plotWidth, top + plotHeight, INK));
  body.push(text(left + plotWidth / 2, top + plotHeight + 40, `subscribers${useLog ? ' (log scale)' : ''}`, { size: 12, anchor: 'middle' }));
  body.push(text(18, top + plotHeight / 2, 'deliveries per second', { size: 12, anchor: 'middle', rotate: -90 }));

  series.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    const dash = i >= SERIES_COLORS.length ? ' stroke-dasharray="6 3"' : '';
    if (s.points.length > 1) {
      const d = s.points.map((p, k) => `${k === 0 ? 'M' : 'L'}${r1(x(p.x))},${r1(y(p.y))}`).join(' ');
      body.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    }
    for (const p of s.points) {
      const detail = `${s.name}: ${fmtInt(p.x)} subscribers, ${fmtCompact(p.run.args.rate)} pub/s → ${fmtInt(p.y)} deliveries/s`;
      body.push(`<circle cx="${r1(x(p.x))}" cy="${r1(y(p.y))}" r="4" fill="${color}" stroke="#fff" stroke-width="1"><title>${esc(detail)}</title></circle>`);
    }
    const ly = top + 8 + i * 20;
    body.push(line(legendX, ly, legendX + 22, ly, color, 2, dash));
    body.push(`<circle cx="${legendX + 11}" cy="${ly}" r="4" fill="${color}"/>`);
    body.push(text(legendX + 30, ly + 4, s.name, { size: 12 }));
  });
  return svgDocument(width, height, title, body);
}

// ---------------------------------------------------------------- report

const SCENARIOS = [
  { key: 'fanout', title: 'Fanout', table: fanoutTable, latency: true },
  { key: 'chat', title: 'Chat', table: chatTable, latency: true },
  { key: 'connections', title: 'Idle connections', table: connectionsTable },
  { key: 'reconnect-storm', title: 'Reconnect storm', table: stormTable },
];

// Fanout and chat rows: by label (first seen first), then by size.
function sortRuns(scenario, runs) {
  const order = new Map();
  runs.forEach((run) => {
    if (!order.has(run.label)) order.set(run.label, order.size);
  });
  const size = (run) => (scenario === 'fanout' ? [run.args.subscribers, run.args.rate] : scenario === 'chat' ? [run.args.rooms * run.args.members_per_room, run.args.rate_per_member] : []);
  return [...runs].sort((a, b) => {
    const byLabel = order.get(a.label) - order.get(b.label);
    if (byLabel) return byLabel;
    const [sa, sb] = [size(a), size(b)];
    for (let i = 0; i < sa.length; i++) {
      const diff = (isNumber(sa[i]) ? sa[i] : 0) - (isNumber(sb[i]) ? sb[i] : 0);
      if (diff) return diff;
    }
    return 0;
  });
}

function main() {
  const { files, out } = parseArgs(process.argv.slice(2));
  const runs = [];
  for (const file of files) {
    try {
      runs.push(load(file));
    } catch (error) {
      process.stderr.write(`report.mjs: skipping ${file}: ${error.message}\n`);
    }
  }
  if (runs.length === 0) {
    process.stderr.write('report.mjs: no readable result files\n');
    process.exit(1);
  }
  fs.mkdirSync(out, { recursive: true });

  const written = [];
  const writeFile = (name, content) => {
    fs.writeFileSync(path.join(out, name), content);
    written.push(path.join(out, name));
  };

  const md = ['# Herald benchmark results', ''];
  md.push(`From ${runs.length} herald-bench result file${runs.length === 1 ? '' : 's'}; made by \`node bench/report.mjs\`.`);
  md.push('Latency runs from the time each message was *scheduled* to be sent to the time a client parsed it,');
  md.push('so a sender that falls behind shows as latency. Anomalies count, over all subscribers, sequence');
  md.push('numbers never received (lost), received twice (duplicated) or after a later one (reordered).');
  md.push('');

  const known = new Set(SCENARIOS.map((s) => s.key));
  const scenarios = [...SCENARIOS];
  for (const run of runs) {
    if (!known.has(run.scenario)) {
      known.add(run.scenario);
      scenarios.push({ key: run.scenario, title: run.scenario, table: genericTable });
    }
  }

  for (const scenario of scenarios) {
    const group = sortRuns(scenario.key, runs.filter((run) => run.scenario === scenario.key));
    if (group.length === 0) continue;
    md.push(`## ${scenario.title}`, '', scenario.table(group), '');
    const slug = scenario.key.replace(/[^a-z0-9-]/gi, '_');
    if (scenario.latency) {
      const svg = latencyChart(scenario.key, group);
      if (svg) {
        writeFile(`latency-${slug}.svg`, svg);
        md.push(`![${scenario.title}: latency percentiles per run](latency-${slug}.svg)`, '');
      }
    }
    if (scenario.key === 'fanout') {
      const svg = throughputChart(group);
      if (svg) {
        writeFile('fanout-throughput.svg', svg);
        md.push('![Fanout: deliveries per second by subscriber count](fanout-throughput.svg)', '');
      }
    }
  }

  md.push('## Result files', '');
  md.push(markdownTable([
    col('file', (run) => path.basename(run.file), String),
    col('scenario', (run) => run.scenario, String),
    labelColumn,
    col('herald-bench', (run) => run.version, String),
    col('cores', (run) => run.cores),
    col('cpu', (run) => run.cpu, (cpu) => cpu ?? 'not recorded'),
    col('steal', (run) => run.steal, (steal) => `${steal.toFixed(2)} s`),
  ], runs));
  md.push('');

  const markdown = md.join('\n');
  writeFile('report.md', markdown);
  process.stdout.write(markdown);
  process.stderr.write(`report.mjs: wrote ${written.join(', ')}\n`);
}

main();
