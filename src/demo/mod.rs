//! `tagstream demo`'s plant: two simulated Modbus devices ([`device`]), an
//! in-process MQTT broker ([`broker`]) with a publishing gateway and a
//! Sparkplug B edge node ([`edge`]), on loopback, whose signals move like real ones. They are polled through
//! the same sources as real devices; nothing here is a source.

pub mod broker;
pub mod device;
pub mod edge;
pub mod rtu;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use device::lock;
pub use device::{ModbusDevice, Registers};

/// Writes an f32 in ABCD order.
pub fn put_f32(regs: &mut [u16], at: usize, v: f32) {
    let b = v.to_be_bytes();
    regs[at] = u16::from_be_bytes([b[0], b[1]]);
    regs[at + 1] = u16::from_be_bytes([b[2], b[3]]);
}

fn get_f32(regs: &[u16], at: usize) -> f32 {
    let [a, b] = regs[at].to_be_bytes();
    let [c, d] = regs[at + 1].to_be_bytes();
    f32::from_be_bytes([a, b, c, d])
}

/// The demo plant's configuration; `{boiler}`, `{line}` and `{mqtt}` are
/// replaced by the simulated devices' and the broker's addresses.
pub const DEMO_CONFIG: &str = include_str!("../../deploy/demo.toml");

/// A running demo plant: two devices, a broker with a publishing gateway
/// and a Sparkplug edge node, and the tasks that move their signals.
pub struct DemoPlant {
    /// The boiler device.
    pub boiler: ModbusDevice,
    /// The packing line device.
    pub line: ModbusDevice,
    /// The in-process MQTT broker.
    pub broker: SocketAddr,
    /// The config text that polls them.
    pub config: String,
}

/// Starts the demo devices and their signal task on loopback.
pub async fn start_demo_plant(shutdown: CancellationToken) -> io::Result<DemoPlant> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let boiler = ModbusDevice::start(any).await?;
    let line = ModbusDevice::start(any).await?;
    let broker = broker::start(0)?;
    let config = DEMO_CONFIG
        .replace("{boiler}", &boiler.addr().to_string())
        .replace("{line}", &line.addr().to_string())
        .replace("{mqtt}", &broker.to_string());
    tokio::spawn(run_gateway(broker, shutdown.clone()));
    // The host id of deploy/demo.toml's [[sparkplug]].
    tokio::spawn(edge::run(broker, "tagstream-demo", shutdown.clone()));
    {
        let mut b = boiler.registers();
        put_f32(&mut b.holding, 0, 20.0);
        put_f32(&mut b.holding, 4, 85.0);
        b.coils[0] = true;
        let mut l = line.registers();
        for (i, pair) in b"WIDGET-A".chunks(2).enumerate() {
            l.holding[10 + i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        l.holding[20] = 1200;
    }
    let (b, l) = (boiler.bank(), line.bank());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut t = 0.0f64;
        let mut count = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            t += 0.1;
            move_signals(&mut lock(&b), &mut lock(&l), t, &mut count);
        }
    });
    Ok(DemoPlant {
        boiler,
        line,
        broker,
        config,
    })
}

/// One 100 ms step of the simulated plant.
fn move_signals(b: &mut Registers, l: &mut Registers, t: f64, count: &mut u32) {
    let noise = || (fastrand::f64() - 0.5) * 0.1;
    // Boiler: temperature follows the setpoint while the burner is on.
    let setpoint = f64::from(get_f32(&b.holding, 4));
    let temp = f64::from(get_f32(&b.holding, 0));
    let target = if b.coils[0] { setpoint } else { 15.0 };
    let temp = temp + (target - temp) * 0.02 + noise();
    put_f32(&mut b.holding, 0, temp as f32);
    b.holding[2] = ((1.0 + temp / 100.0) * 100.0).clamp(0.0, 65_535.0) as u16; // bar * 100
    let running = u16::from(b.coils[0]);
    let alarm = u16::from(temp > 120.0) << 3;
    b.holding[3] = running | alarm | 0b0100; // bit 2: remote mode
    // Line: flow oscillates, the counter integrates it, the product changes.
    let flow = 12.0 + 3.0 * (t / 5.0).sin() + noise();
    let fb = (flow as f32).to_be_bytes();
    l.input[0] = u16::from_be_bytes([fb[2], fb[3]]); // CDAB: word-swapped
    l.input[1] = u16::from_be_bytes([fb[0], fb[1]]);
    *count = count.wrapping_add((flow / 4.0) as u32);
    l.input[2] = (*count >> 16) as u16;
    l.input[3] = *count as u16;
    l.input[4] = ((50.0 + 30.0 * (t / 20.0).sin()) * 10.0) as u16;
    l.discrete[0] = (t as u64 / 15) % 4 == 3;
    let product: &[u8; 8] = if (t as u64 / 30).is_multiple_of(2) {
        b"WIDGET-A"
    } else {
        b"WIDGET-B"
    };
    for (i, pair) in product.chunks(2).enumerate() {
        l.holding[10 + i] = u16::from_be_bytes([pair[0], pair[1]]);
    }
}

/// A simulated PLC gateway publishing line 3 and line 4 over MQTT.
async fn run_gateway(broker: SocketAddr, shutdown: CancellationToken) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let opts = MqttOptions::new("demo-gateway", broker.ip().to_string(), broker.port());
    let (client, mut events) = AsyncClient::new(opts, 64);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut t = 0.0f64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        t += 0.2;
        let speed = 1450.0 + 40.0 * (t / 7.0).sin() + (fastrand::f64() - 0.5) * 2.0;
        let running = (t as u64 / 40) % 5 != 4;
        let state = if running { "RUNNING" } else { "CHANGEOVER" };
        let mut messages = vec![
            (
                "factory/line3/speed".to_string(),
                format!("{:.1}", if running { speed } else { 0.0 }),
                false,
            ),
            ("factory/line3/state".to_string(), state.to_string(), true),
            (
                "factory/line3/running".to_string(),
                if running { "on" } else { "off" }.to_string(),
                true,
            ),
        ];
        let machines: &[&str] = if t < 15.0 {
            &["m1", "m2"]
        } else {
            &["m1", "m2", "m3"]
        };
        for (i, m) in machines.iter().enumerate() {
            let temp = 60.0 + 5.0 * i as f64 + 3.0 * (t / (9.0 + i as f64)).sin();
            let body = format!(
                r#"{{"temp":{temp:.2},"ts":{}}}"#,
                crate::sample::now_us() / 1000
            );
            messages.push((format!("factory/line4/{m}/telemetry"), body, false));
        }
        for (topic, payload, retain) in messages {
            let _ = client.try_publish(topic, QoS::AtMostOnce, retain, payload);
        }
    }
}
