//! An in-process MQTT broker (rumqttd) on loopback, for `tagstream demo`
//! and for tests on a machine without Mosquitto. rumqttd makes its own
//! runtimes and blocks, so it runs on a std thread; it has no stop, so it
//! lives as long as the process.

use std::net::SocketAddr;

/// Starts a broker on `127.0.0.1:port` (port 0 picks a free one).
pub fn start(port: u16) -> std::io::Result<SocketAddr> {
    let port = if port == 0 {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        port
    };
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 4194304
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| std::io::Error::other(format!("broker config: {e}")))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded mqtt broker stopped");
            }
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Ready when it accepts.
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(std::io::Error::other("embedded mqtt broker did not start"))
}
