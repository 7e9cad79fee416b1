//! One Redis master found through Redis Sentinel, and followed when it
//! fails over.
//!
//! At start the node asks the sentinels which server is the master of
//! `master_name` and connects to it as to a single Redis ([`Single`]).
//! A watcher then asks again every [`WATCH_EVERY`]; when the answer
//! changes (a failover promoted a replica), it connects to the new
//! master, subscribes there to every pub/sub channel the node follows,
//! and switches over. Commands sent meanwhile to the old master fail and
//! are reported as `Unavailable` (a publish gets 503 / code 100).
//!
//! What the node may have missed is handled as on a Redis restart: the
//! old master's subscription connections report their loss, and the
//! switch reports another (`EngineEvent::Interrupted`), so positioned
//! subscribers end with 2500 and recover. Because Redis replicates
//! asynchronously, the new master may lack the old one's last
//! publications; streams therefore carry the run id of the master that
//! wrote them (the backplane's *generation*) and start again under a new
//! epoch on another one, so no client recovers past a lost publication
//! without being told `recovered: false`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, RedisResult};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::backplane::{Backplane, Single};
use crate::pushes::Pushes;

/// How often the watcher asks the sentinels where the master is.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Where to find the sentinels.
#[derive(Debug, Clone)]
pub struct SentinelSettings {
    /// `redis://host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
}

/// The master in use.
struct Master {
    address: String,
    run_id: String,
    single: Single,
}

/// What the backplane and its watcher share.
struct Shared {
    settings: SentinelSettings,
    timeout: Duration,
    subscriber_connections: usize,
    pushes: Pushes,
    master: RwLock<Arc<Master>>,
    /// The pub/sub channels this node follows, to subscribe to on a new
    /// master. Held across a switch, so no subscribe falls between.
    subscribed: Mutex<HashSet<String>>,
}

/// One Redis master behind Sentinel.
pub struct Sentinel {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel").field("master", &self.shared.current().address).finish_non_exhaustive()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn failed(what: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis sentinel", what))
}

/// Asks each sentinel in turn for the master's address; the first answer wins.
async fn master_address(settings: &SentinelSettings, timeout: Duration) -> RedisResult<String> {
    let mut problems = Vec::new();
    for sentinel in &settings.sentinels {
        let asked = async {
            let client = redis::Client::open(sentinel.as_str())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&settings.master_name)
                .query_async::<Option<(String, u16)>>(&mut connection)
                .await
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(Some((host, port)))) => return Ok(format!("redis://{host}:{port}")),
            Ok(Ok(None)) => problems.push(format!("{sentinel} does not know master `{}`", settings.master_name)),
            Ok(Err(error)) => problems.push(format!("{sentinel}: {error}")),
            Err(_) => problems.push(format!("{sentinel}: no answer")),
        }
    }
    Err(failed(problems.join("; ")))
}

/// The run id of the Redis behind `commands`.
async fn run_id(commands: &ConnectionManager) -> RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut commands.clone()).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .ok_or_else(|| failed("INFO server has no run_id".into()))
}

impl Master {
    /// Connects to the master at `address` as to a single Redis.
    async fn connect(
        address: String,
        timeout: Duration,
        subscriber_connections: usize,
        pushes: &Pushes,
    ) -> RedisResult<Self> {
        let single = Single::connect(&address, timeout, subscriber_connections, pushes.clone()).await?;
        let run_id =
            run_id(&single.commands("")).await.map_err(|e| failed(format!("{address} did not say its run id: {e}")))?;
        Ok(Self { address, run_id, single })
    }
}

impl Shared {
    fn current(&self) -> Arc<Master> {
        self.master.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Switches to the master the sentinels name, if it is another. It is
    /// connected to before the subscriptions' lock is taken, within the
    /// command timeout: subscribes and unsubscribes wait only for the
    /// switch itself (each subscription made again on it, each within
    /// the timeout), never for a master that does not answer.
    async fn follow(&self) -> RedisResult<()> {
        let address = master_address(&self.settings, self.timeout).await?;
        if address == self.current().address {
            return Ok(());
        }
        let connecting = Master::connect(address.clone(), self.timeout, self.subscriber_connections, &self.pushes);
        let master = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| failed(format!("the master the sentinels name, {address}, did not answer in time")))??;
        let subscribed = self.subscribed.lock().await;
        for name in subscribed.iter() {
            tokio::time::timeout(self.timeout, master.single.subscribe("", name))
                .await
                .map_err(|_| failed(format!("{address} did not take a subscription in time")))??;
        }
        let old = std::mem::replace(&mut *self.master.write().unwrap_or_else(|e| e.into_inner()), Arc::new(master));
        let new = self.current();
        tracing::warn!(
            from = %old.address,
            to = %new.address,
            "the redis master failed over; following it, and asking positioned subscribers to recover"
        );
        let _ = self.pushes.send(PushInfo { kind: PushKind::Disconnection, data: Vec::new() });
        Ok(())
    }
}

impl Sentinel {
    /// Finds the master through the sentinels, connects to it, and starts
    /// following it; every pub/sub message goes to `pushes`.
    pub async fn connect(
        settings: SentinelSettings,
        timeout: Duration,
        subscriber_connections: usize,
        pushes: Pushes,
    ) -> RedisResult<Self> {
        let address = master_address(&settings, timeout).await?;
        let master = Master::connect(address, timeout, subscriber_connections, &pushes).await?;
        let shared = Arc::new(Shared {
            settings,
            timeout,
            subscriber_connections,
            pushes,
            master: RwLock::new(Arc::new(master)),
            subscribed: Mutex::default(),
        });
        let watched = Arc::downgrade(&shared);
        let watcher = tokio::spawn(async move {
            let mut every = tokio::time::interval(WATCH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(shared) = watched.upgrade() else { return };
                if let Err(error) = shared.follow().await {
                    tracing::warn!(%error, "cannot tell where the redis master is; asking the sentinels again");
                }
            }
        });
        Ok(Self { shared, watcher })
    }
}

#[async_trait]
impl Backplane for Sentinel {
    type Connection = ConnectionManager;
    const PUBLISH: &'static str = "publish";

    fn commands(&self, route: &str) -> ConnectionManager {
        self.shared.current().single.commands(route)
    }

    async fn subscribe(&self, route: &str, name: &str) -> RedisResult<()> {
        let mut subscribed = self.shared.subscribed.lock().await;
        self.shared.current().single.subscribe(route, name).await?;
        subscribed.insert(name.to_owned());
        Ok(())
    }

    async fn unsubscribe(&self, route: &str, name: &str) -> RedisResult<()> {
        let mut subscribed = self.shared.subscribed.lock().await;
        subscribed.remove(name);
        self.shared.current().single.unsubscribe(route, name).await
    }

    async fn subscribe_control(&self, route: &str, name: &str) -> RedisResult<()> {
        let mut subscribed = self.shared.subscribed.lock().await;
        self.shared.current().single.subscribe_control(route, name).await?;
        subscribed.insert(name.to_owned());
        Ok(())
    }

    async fn ping(&self) -> RedisResult<()> {
        self.shared.current().single.ping().await
    }

    fn generation(&self) -> String {
        self.shared.current().run_id.clone()
    }
}
