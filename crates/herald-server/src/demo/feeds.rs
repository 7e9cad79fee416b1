//! The simulated sources of the dashboard and fleet demos, published four
//! times a second through the node's own server API (`POST /api/batch`),
//! as an application's backend would publish them:
//!
//! - `cache-dashboard`: service metrics (event `metrics` for pusher-js; a
//!   Pusher `cache-` channel gives each new subscriber the last one);
//! - `fleet:van-<n>`: one delivery van's position, speed and heading, and
//!   `fleet:all`: every van's position, twice a second, for the map.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use rand::Rng;
use serde_json::{json, Value};

use crate::http::client::{self, Sender};

/// How often the feeds publish.
const TICK: Duration = Duration::from_millis(250);

/// The fleet's map, in map units, and the size of its blocks.
const MAP_WIDTH: f64 = 1000.0;
const MAP_HEIGHT: f64 = 600.0;
const BLOCK: f64 = 100.0;

const DRIVERS: [&str; 6] = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara"];

/// Starts publishing to the node at `127.0.0.1:port` with `api_key`.
pub(crate) fn start(port: u16, api_key: String) {
    tokio::spawn(run(port, api_key));
}

async fn run(port: u16, api_key: String) {
    let mut metrics = Metrics::default();
    let mut fleet = Fleet::new(DRIVERS.len());
    let mut sender: Option<Sender> = None;
    let mut failing = false;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 0u64.. {
        ticks.tick().await;
        let mut commands = vec![publish("cache-dashboard", metrics.next(), Some("metrics"))];
        commands.extend(fleet.step(TICK.as_secs_f64(), tick % 2 == 0));
        let body = json!({ "commands": commands }).to_string();
        match post(&mut sender, port, &api_key, body).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("demo feeds: publishing again");
            }
            Ok(()) => {}
            Err(problem) if !failing => {
                failing = true;
                sender = None;
                tracing::warn!(%problem, "demo feeds: the server API refused a publish; retrying every tick");
            }
            Err(_) => sender = None,
        }
    }
}

fn publish(channel: &str, data: Value, event: Option<&str>) -> Value {
    let mut publish = json!({ "channel": channel, "data": data });
    if let (Some(event), Some(fields)) = (event, publish.as_object_mut()) {
        fields.insert("tags".to_owned(), json!({ "event": event }));
    }
    json!({ "publish": publish })
}

/// One batch to the API, on a kept-open connection.
async fn post(sender: &mut Option<Sender>, port: u16, api_key: &str, body: String) -> Result<(), String> {
    let connection = match sender {
        Some(open) if !open.is_closed() => open,
        _ => sender.insert(client::open(None, "127.0.0.1", port).await?),
    };
    let request = Request::post("/api/batch")
        .header("host", format!("127.0.0.1:{port}"))
        .header("x-api-key", api_key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = connection.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let answer = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
    let refused = String::from_utf8_lossy(&answer).contains("\"error\"");
    if !status.is_success() || refused {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(())
}

/// A service's metrics wandering around their usual values.
#[derive(Debug)]
struct Metrics {
    requests: f64,
    latency: f64,
    errors: f64,
    cpu: [f64; 3],
    orders: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { requests: 1200.0, latency: 42.0, errors: 0.4, cpu: [35.0, 48.0, 41.0], orders: 0 }
    }
}

impl Metrics {
    fn next(&mut self) -> Value {
        let mut rng = rand::rng();
        let mut wander = |value: f64, step: f64, low: f64, high: f64| -> f64 {
            (value + rng.random_range(-step..=step)).clamp(low, high)
        };
        self.requests = wander(self.requests, 60.0, 400.0, 2400.0);
        self.latency = wander(self.latency, 4.0, 12.0, 180.0);
        self.errors = wander(self.errors, 0.15, 0.0, 5.0);
        self.cpu = self.cpu.map(|cpu| wander(cpu, 3.0, 5.0, 98.0));
        self.orders = self.orders.saturating_add(rng.random_range(0..=6));
        let round = |value: f64| (value * 10.0).round() / 10.0;
        json!({
            "at": unix_millis(),
            "requests": round(self.requests),
            "latency_p99": round(self.latency),
            "error_rate": round(self.errors),
            "cpu": self.cpu.map(round),
            "orders": self.orders,
        })
    }
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Delivery vans driving a street grid, turning at random at each corner.
#[derive(Debug)]
struct Fleet {
    vans: Vec<Van>,
}

#[derive(Debug)]
struct Van {
    id: usize,
    driver: &'static str,
    at: (f64, f64),
    to: (f64, f64),
    /// Map units per second.
    speed: f64,
    odometer: f64,
}

impl Fleet {
    fn new(count: usize) -> Fleet {
        let mut rng = rand::rng();
        let vans = (0..count)
            .zip(DRIVERS)
            .map(|(id, driver)| {
                let at = (corner(&mut rng, MAP_WIDTH), corner(&mut rng, MAP_HEIGHT));
                let mut van = Van { id: id.saturating_add(1), driver, at, to: at, speed: 0.0, odometer: 0.0 };
                van.turn(&mut rng);
                van
            })
            .collect();
        Fleet { vans }
    }

    /// Moves every van `seconds` on; the publications of each van, and of
    /// the whole fleet when `with_map`.
    fn step(&mut self, seconds: f64, with_map: bool) -> Vec<Value> {
        let mut rng = rand::rng();
        let mut commands = Vec::with_capacity(self.vans.len().saturating_add(1));
        for van in &mut self.vans {
            van.drive(seconds, &mut rng);
            commands.push(publish(&format!("fleet:van-{}", van.id), van.details(), None));
        }
        if with_map {
            let positions: Vec<Value> = self.vans.iter().map(Van::position).collect();
            commands.push(publish("fleet:all", json!({ "vans": positions }), None));
        }
        commands
    }
}

/// A street corner on an axis `size` units long.
fn corner(rng: &mut impl Rng, size: f64) -> f64 {
    let blocks = (size / BLOCK) as u32;
    f64::from(rng.random_range(0..=blocks)) * BLOCK
}

impl Van {
    fn drive(&mut self, seconds: f64, rng: &mut impl Rng) {
        let mut left = self.speed * seconds;
        self.odometer += left;
        // Up to a few corners per step; each turn picks the next block.
        for _ in 0..4 {
            let (dx, dy) = (self.to.0 - self.at.0, self.to.1 - self.at.1);
            let distance = dx.hypot(dy);
            if distance > left {
                self.at = (self.at.0 + dx / distance * left, self.at.1 + dy / distance * left);
                return;
            }
            self.at = self.to;
            left -= distance;
            self.turn(rng);
        }
    }

    /// Picks the next corner: any neighbour on the map but the way back,
    /// and a new speed.
    fn turn(&mut self, rng: &mut impl Rng) {
        let (x, y) = self.at;
        let back = (x - (self.to.0 - x), y - (self.to.1 - y));
        let neighbours: Vec<(f64, f64)> = [(x + BLOCK, y), (x - BLOCK, y), (x, y + BLOCK), (x, y - BLOCK)]
            .into_iter()
            .filter(|(nx, ny)| (0.0..=MAP_WIDTH).contains(nx) && (0.0..=MAP_HEIGHT).contains(ny))
            .filter(|corner| *corner != back || self.to == self.at)
            .collect();
        let choice = rng.random_range(0..neighbours.len().max(1));
        self.to = neighbours.get(choice).copied().unwrap_or(back);
        self.speed = rng.random_range(25.0..60.0);
    }

    fn heading(&self) -> f64 {
        let (dx, dy) = (self.to.0 - self.at.0, self.to.1 - self.at.1);
        dy.atan2(dx).to_degrees().round()
    }

    fn position(&self) -> Value {
        json!({ "id": self.id, "x": self.at.0.round(), "y": self.at.1.round(), "heading": self.heading() })
    }

    fn details(&self) -> Value {
        json!({
            "id": self.id,
            "driver": self.driver,
            "x": self.at.0.round(),
            "y": self.at.1.round(),
            "heading": self.heading(),
            // A toy town: its speedometers read map units per second as
            // km/h, and its odometers a thousand units as a kilometre.
            "speed_kmh": self.speed.round(),
            "odometer_km": (self.odometer / 100.0).round() / 10.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vans_stay_on_the_streets_of_the_map() {
        let mut fleet = Fleet::new(6);
        for _ in 0..2000 {
            let commands = fleet.step(0.25, true);
            assert_eq!(commands.len(), 7, "one publication per van and one for the map");
            for van in &fleet.vans {
                let (x, y) = van.at;
                assert!((0.0..=MAP_WIDTH).contains(&x) && (0.0..=MAP_HEIGHT).contains(&y), "{van:?} left the map");
                let on_street = |v: f64| (v / BLOCK - (v / BLOCK).round()).abs() < 1e-6;
                assert!(on_street(x) || on_street(y), "{van:?} is inside a block");
            }
        }
        assert!(fleet.vans.iter().all(|van| van.odometer > 0.0), "every van moved");
    }

    #[test]
    fn a_metrics_tick_carries_every_value_the_dashboard_draws() {
        let mut metrics = Metrics::default();
        let tick = metrics.next();
        for field in ["at", "requests", "latency_p99", "error_rate", "cpu", "orders"] {
            assert!(tick.get(field).is_some(), "{field} missing from {tick}");
        }
        assert_eq!(tick["cpu"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn a_publish_names_its_pusher_event_in_a_tag() {
        let command = publish("cache-dashboard", json!({"n": 1}), Some("metrics"));
        assert_eq!(
            command,
            json!({"publish": {"channel": "cache-dashboard", "data": {"n": 1}, "tags": {"event": "metrics"}}})
        );
    }
}
