//! Writes through a gateway: checked there as on a single node, carried
//! out by the edge that owns the tag (NATS request/reply), answered with
//! the edge's result; a write to an edge that is gone is answered at once.

use tagstream::demo::ModbusDevice;
use tagstream_client::{Client, Options};

use crate::common::*;
use crate::{Nats, node_with};

const DEVICE: &str = r#"
[[modbus]]
name = "dev"
address = "ADDR"
poll_interval = "50ms"

[[modbus.tags]]
name = "w/level"
address = 0
type = "u16"

[[modbus.tags]]
name = "w/setpoint"
address = 1
type = "u16"
writable = true
min = 0
max = 1000
"#;

const WRITERS: &str = "[auth]\nanonymous = { read = [\"#\"], write = [\"w/setpoint\"] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_gateway_reaches_the_owning_edges_device() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let dev = ModbusDevice::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let device = DEVICE.replace("ADDR", &dev.addr().to_string());
    let edge = node_with(&nats, "edge", "edgew", "W1", &[], &device).await;
    let gw = node_with(&nats, "gateway", "gw", "W1", &[], WRITERS).await;
    let (client, mut updates) = Client::start(Options::new(url(&gw)));
    let drain = tokio::spawn(async move { while updates.next().await.is_some() {} });
    // The tag reaches the gateway's catalog once the edge has claimed it.
    tokio::time::timeout(DEADLINE, async {
        while gw.engine.catalog().id("w/setpoint").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gateway knows the tag");

    let good = client.write("w/setpoint", 650.0).await.unwrap();
    assert!(good.is_good(), "{good:?}");
    assert_eq!(dev.registers().holding[1], 650, "the edge wrote the device");
    // Checked on the gateway: never sent.
    let far = client.write("w/setpoint", 5000.0).await.unwrap();
    assert_eq!(far.status_name, "BadOutOfRange");
    let denied = client.write("w/level", 1.0).await.unwrap();
    assert_ne!(denied.status, 0, "not writable, not in the write scope");
    assert_eq!(dev.registers().holding[1], 650);

    // The edge goes away: the gateway still knows the tag, the write is
    // answered at once and never reaches the device.
    edge.stop().await;
    let gone = client.write("w/setpoint", 700.0).await.unwrap();
    assert_eq!(gone.status_name, "BadCommunicationError", "{gone:?}");
    assert!(gone.message.contains("edgew"), "{}", gone.message);
    assert_eq!(dev.registers().holding[1], 650);
    client.close().await;
    drain.await.unwrap();
    gw.stop().await;
}
