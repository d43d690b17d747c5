//! The few bytes of MQTT 3.1.1 and NATS a lean subscriber or publisher
//! needs, parsed in place without allocation per message.

use anyhow::Context as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::lean::Tally;

/// An MQTT string: length, then bytes.
pub fn mqtt_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// An MQTT packet: fixed header byte, remaining length, body.
pub fn mqtt_packet(first: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    buf.put_slice(body);
    buf.freeze()
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive off.
pub fn mqtt_connect(client_id: &str) -> Bytes {
    let mut body = BytesMut::new();
    mqtt_string(&mut body, "MQTT");
    body.put_slice(&[4, 0x02, 0, 0]);
    mqtt_string(&mut body, client_id);
    mqtt_packet(0x10, &body)
}

/// A QoS 0 PUBLISH.
pub fn mqtt_publish(topic: &str, payload: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(topic.len() + payload.len() + 2);
    mqtt_string(&mut body, topic);
    body.put_slice(payload);
    mqtt_packet(0x30, &body)
}

/// Splits one whole MQTT packet off the front of `buf`.
pub fn mqtt_next(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    let (mut len, mut mult, mut at) = (0usize, 1usize, 1);
    loop {
        let byte = *buf.get(at)?;
        len += (byte & 0x7f) as usize * mult;
        mult *= 128;
        at += 1;
        if byte & 0x80 == 0 || at > 4 {
            break;
        }
    }
    if buf.len() < at + len {
        return None;
    }
    let first = buf[0];
    let mut packet = buf.split_to(at + len).freeze();
    packet.advance(at);
    Some((first, packet))
}

/// Counts one delivery and its latency from the ASCII µs stamp.
pub fn record(tally: &mut Tally, stamp: &[u8], now: i64) {
    tally.updates += 1;
    let sent = std::str::from_utf8(stamp)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    if let Some(sent) = sent {
        let _ = tally.latency.record((now - sent).max(1) as u64);
    }
}

/// Records every whole PUBLISH in `buf`.
pub fn mqtt_deliveries(buf: &mut BytesMut, tally: &mut Tally, now: i64) {
    while let Some((first, mut packet)) = mqtt_next(buf) {
        if first >> 4 == 3 && packet.len() >= 2 {
            let topic = packet.get_u16() as usize;
            packet.advance(topic.min(packet.len()));
            record(tally, &packet, now);
        }
    }
}

/// Records every whole `MSG` in `buf`; true if the server sent a PING.
pub fn nats_deliveries(buf: &mut BytesMut, tally: &mut Tally, now: i64) -> anyhow::Result<bool> {
    let mut ping = false;
    while let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
        if buf.starts_with(b"MSG ") {
            let size = buf[..line_end]
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<usize>().ok())
                .context("MSG without a size")?;
            if buf.len() < line_end + 2 + size + 2 {
                break;
            }
            let msg = buf.split_to(line_end + 2 + size + 2);
            record(tally, &msg[line_end + 2..line_end + 2 + size], now);
        } else {
            ping |= buf.starts_with(b"PING");
            buf.advance(line_end + 2);
        }
    }
    Ok(ping)
}
