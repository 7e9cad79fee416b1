//! The node registry in a JetStream stream, against a real `nats-server`:
//! the engine conformance suite's registry case.

use std::sync::Arc;
use std::time::Duration;

use herald_engine::conformance::{self, Clock};
use herald_engine::{Engine, MemoryEngine};
use herald_nats::testing::NatsServer;
use herald_nats::{NatsBroker, NatsNodeRegistry, NatsSettings};

#[tokio::test]
async fn the_node_registry_forgets_silent_nodes() {
    let server = NatsServer::start();
    let settings = NatsSettings {
        addresses: vec![server.url()],
        prefix: "herald-test".into(),
        command_timeout: Duration::from_secs(5),
    };
    let broker = Arc::new(NatsBroker::connect(&settings).await.expect("connect to nats-server"));
    let nodes = NatsNodeRegistry::new(broker.client(), &settings.prefix, settings.command_timeout);
    let memory = Arc::new(MemoryEngine::default());
    let engine = Engine::from_parts("nats", broker, memory.clone(), memory.clone(), memory, nodes);
    conformance::nodes::the_node_registry_forgets_silent_nodes(engine, Clock::Real).await;
}
