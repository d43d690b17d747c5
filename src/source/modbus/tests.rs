//! The Modbus source's write side against a real simulated device over
//! loopback: a write its session no longer waits for, or one past its
//! start deadline, never reaches the device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ModbusConfig, ModbusSource};
use crate::command::{WriteCommand, WriteReply};
use crate::config::Config;
use crate::demo::ModbusDevice;
use crate::sample::Value;
use crate::source::SourceContext;
use crate::status;

fn command(value: u64, start_by: Instant) -> (WriteCommand, oneshot::Receiver<WriteReply>) {
    WriteCommand::for_test(Value::U64(value), start_by, 0)
}

#[tokio::test]
async fn abandoned_and_late_writes_never_reach_the_device_and_a_timely_one_does() {
    let dev = ModbusDevice::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    dev.registers().write_log = Some(Vec::new());
    let toml = format!(
        "[[modbus]]\nname = \"d\"\naddress = \"{}\"\npoll_interval = \"50ms\"\ntimeout = \"300ms\"\n\
         [[modbus.tags]]\nname = \"d/sp\"\naddress = 0\ntype = \"u16\"\nwritable = true\n",
        dev.addr()
    );
    let config: Arc<ModbusConfig> = Arc::new(Config::parse(&toml).unwrap().modbus.remove(0));
    let (input, _samples) = flume::bounded(1024);
    let (commands, queue) = flume::bounded(8);
    let shutdown = CancellationToken::new();
    let cx = SourceContext::new(0, "d", "node", input, queue, shutdown.clone());
    let task = tokio::spawn(ModbusSource::new(config, cx).run());

    let later = Instant::now() + Duration::from_secs(10);
    let (abandoned, rx) = command(1, later);
    drop(rx);
    let (late, late_rx) = command(2, Instant::now() - Duration::from_millis(1));
    let (timely, timely_rx) = command(3, later);
    for cmd in [abandoned, late, timely] {
        commands.send_async(cmd).await.unwrap();
    }
    assert_eq!(timely_rx.await.unwrap(), Ok(""));
    let (code, why) = late_rx.await.unwrap().unwrap_err();
    assert_eq!(code, status::BAD_TIMEOUT);
    assert!(why.contains("never sent"), "{why}");
    let seen: Vec<Vec<u16>> = dev
        .registers()
        .write_log
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.words.clone())
        .collect();
    assert_eq!(seen, [vec![3]], "only the timely write reached the device");
    assert_eq!(dev.registers().holding[0], 3);
    shutdown.cancel();
    task.await.unwrap();
}

/// A write's deadline runs from its receipt: one that waits for a shared
/// bus past its start deadline is answered BadTimeout and never sent.
#[tokio::test]
async fn a_write_that_waits_for_the_bus_past_its_deadline_is_never_sent() {
    let line = crate::demo::rtu::RtuLine::tcp(([127, 0, 0, 1], 0).into(), &[1, 2], Duration::ZERO)
        .await
        .unwrap();
    line.unit(1).write_log = Some(Vec::new());
    let gateway = line.addr().unwrap();
    let mut toml = String::new();
    for u in 1..=2 {
        toml += &format!(
            "[[modbus]]\nname = \"u{u}\"\naddress = \"{gateway}\"\nframing = \"rtu\"\nunit_id = {u}\n\
             poll_interval = \"1h\"\ntimeout = \"300ms\"\n\
             [[modbus.tags]]\nname = \"u{u}/sp\"\naddress = 0\ntype = \"u16\"\nwritable = true\n"
        );
    }
    let config = Config::parse(&toml).unwrap();
    let attached = super::bus::attach(&config.modbus);
    let bus = attached[0].bus.clone().unwrap();
    let (input, _samples) = flume::bounded(1024);
    let (commands, queue) = flume::bounded(8);
    let shutdown = CancellationToken::new();
    let cx = SourceContext::new(0, "u1", "node", input, queue, shutdown.clone());
    let task = tokio::spawn(ModbusSource::new(Arc::new(attached[0].clone()), cx).run());
    // Unit 1's first poll, then the bus is held (as another unit's slow
    // request would) past the write's start deadline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let turn = bus.acquire().await;
    let (cmd, reply) = command(5, Instant::now() + Duration::from_millis(50));
    commands.send_async(cmd).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(turn);
    let (code, why) = reply.await.unwrap().unwrap_err();
    assert_eq!(code, status::BAD_TIMEOUT);
    assert!(
        why.contains("waited for the bus") && why.contains("never sent"),
        "{why}"
    );
    assert_eq!(
        line.unit(1).write_log.as_deref(),
        Some(&[][..]),
        "nothing reached unit 1"
    );
    // With the bus free, the next write goes through.
    let (cmd, reply) = command(6, Instant::now() + Duration::from_secs(5));
    commands.send_async(cmd).await.unwrap();
    assert_eq!(reply.await.unwrap(), Ok(""));
    assert_eq!(line.unit(1).holding[0], 6);
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn a_failed_write_is_said_in_a_plant_engineers_words() {
    use super::{RequestError, write_failure};
    let cut = RequestError::Communication("Operation now in progress (os error 115)".into());
    let why = write_failure(&cut);
    assert!(
        why.starts_with("the connection to the device failed during the write"),
        "{why}"
    );
    assert!(
        why.contains("may or may not have been carried out"),
        "{why}"
    );
    let late = write_failure(&RequestError::Timeout(std::time::Duration::from_millis(
        500,
    )));
    assert!(late.contains("did not acknowledge within 500ms"), "{late}");
}
