// Fleet tracking on centrifuge-js: delivery vans on a plain SVG map. The
// demo's feed (your backend, in a real app) publishes through the server
// API: every van's position twice a second on `fleet:all`, and each van's
// details four times a second on its own channel `fleet:van-<n>`. The map
// follows `fleet:all`; clicking a van subscribes to that van's channel
// (and reads its last position from history, so the panel fills at once)
// and draws its trail; following another van unsubscribes the first.
import { connect, el, userName } from './shared/demo.mjs';

const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#e03131', '#1971c2', '#2f9e44', '#f08c00', '#9c36b5', '#0c8599', '#5c940d', '#c2255c'];
const colorOf = (id) => COLORS[id % COLORS.length];
const svg = (tag, attributes = {}) => {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
};

const name = userName();
document.getElementById('you').textContent = name;
const client = connect(name);
const map = document.getElementById('map');
const vans = new Map(); // van id → its <g> on the map
let followed = null; // { id, sub, trail }

// The town: blocks between streets every 100 units.
for (let x = 0; x < 1000; x += 100) {
  for (let y = 0; y < 600; y += 100) map.append(svg('rect', { class: 'block', x: x + 8, y: y + 8, width: 84, height: 84, rx: 6 }));
}
const trail = svg('polyline', { class: 'trail' });
map.append(trail);

const fleet = client.newSubscription('fleet:all');
fleet.on('publication', ({ data }) => {
  for (const van of Array.isArray(data?.vans) ? data.vans : []) {
    if (!Number.isInteger(van.id)) continue;
    if (!vans.has(van.id)) addVan(van.id);
    vans.get(van.id).setAttribute('transform', `translate(${Number(van.x)} ${Number(van.y)})`);
  }
});
fleet.subscribe();
window.demo = { client, follow, vans };

function addVan(id) {
  const marker = svg('g', { class: 'van', 'data-van': id });
  marker.append(svg('circle', { r: 18, fill: colorOf(id) }));
  const label = svg('text');
  label.textContent = String(id);
  marker.append(label);
  marker.addEventListener('click', () => follow(id));
  map.append(marker);
  vans.set(id, marker);
}

function follow(id) {
  if (followed) {
    followed.sub.unsubscribe();
    client.removeSubscription(followed.sub);
    vans.get(followed.id)?.classList.remove('followed');
  }
  const sub = client.newSubscription(`fleet:van-${id}`);
  followed = { id, sub, points: [] };
  vans.get(id)?.classList.add('followed');
  trail.setAttribute('stroke', colorOf(id));
  trail.setAttribute('points', '');
  document.getElementById('hint').textContent = `Van ${id}, live:`;
  sub.on('publication', ({ data }) => showVan(id, data));
  sub.on('subscribed', async () => {
    const { publications } = await sub.history({ limit: 1, reverse: true });
    if (publications[0] && followed?.id === id && followed.points.length === 0) showVan(id, publications[0].data);
  });
  sub.subscribe();
}

function showVan(id, van) {
  if (followed?.id !== id || !van) return;
  followed.points.push(`${Number(van.x)},${Number(van.y)}`);
  if (followed.points.length > 60) followed.points.shift();
  trail.setAttribute('points', followed.points.join(' '));
  const row = (term, value) => [el('dt', {}, term), el('dd', { 'data-field': term }, String(value))];
  document.getElementById('details').replaceChildren(
    ...row('driver', van.driver), ...row('speed', `${van.speed_kmh} km/h`), ...row('heading', `${van.heading}°`),
    ...row('position', `${van.x}, ${van.y}`), ...row('odometer', `${van.odometer_km} km`));
}
