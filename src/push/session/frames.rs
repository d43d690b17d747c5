//! Encoders of the frames a session sends: Catalog and Snapshot chunks,
//! catch-up and merged Deltas, errors and write results. Pure: they read
//! the catalog, table and batches they are given and append to an
//! `Outbox`; Delta updates are the batches' shared bytes, never re-encoded.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::engine::batch::encode_update;
use crate::engine::catalog::Catalog;
use crate::engine::selection::Selection;
use crate::engine::table::TagTable;
use crate::pattern;
use crate::proto::{self, ErrorCode, server_message};
use crate::push::outbox::Outbox;
use crate::push::shard::Item;
use crate::sample::TagId;

/// Target size of one Catalog or Snapshot chunk: a client can apply a large
/// subscription piece by piece, and a burst of new sessions holds little
/// memory per chunk while its writes are pending.
pub const CHUNK_BYTES: usize = 4096;

/// An `Error` message.
pub fn error_frame(code: ErrorCode, message: String) -> Bytes {
    proto::server(server_message::Kind::Error(proto::Error {
        code: code as i32,
        message,
    }))
    .to_bytes()
}

/// A `WriteResult` message.
pub fn write_result(request_id: u64, status: u32, message: String) -> Bytes {
    proto::server(server_message::Kind::WriteResult(proto::WriteResult {
        request_id,
        status,
        message,
    }))
    .to_bytes()
}

/// Splits patterns into the valid ones and, if any were invalid, one
/// message naming them all (one Error per request, not one per pattern).
pub fn valid_patterns(patterns: Vec<String>, max_bytes: usize) -> (Vec<String>, Option<String>) {
    let mut errors = Vec::new();
    let mut refused = 0usize;
    let valid = patterns
        .into_iter()
        .filter(|p| match check_pattern(p, max_bytes) {
            Ok(()) => true,
            Err(e) => {
                // A few reasons, each bounded: the answer to a thousand
                // bad patterns is not a thousand echoes.
                refused += 1;
                if errors.len() < 5 {
                    errors.push(e);
                }
                false
            }
        })
        .collect();
    let message = (refused > 0).then(|| {
        let more = refused - errors.len();
        let more = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        format!("{refused} pattern(s) ignored: {}{more}", errors.join("; "))
    });
    (valid, message)
}

/// A pattern's syntax and length (`max_pattern_bytes`).
pub fn check_pattern(p: &str, max_bytes: usize) -> Result<(), String> {
    pattern::validate_within(p, max_bytes, "max_pattern_bytes")
}

/// Queues what `selection` takes from `items` (its shard's parts of the
/// batches since its cursor) after `position` as one Delta (one frame and
/// one write per wakeup) that runs to `head_seq`, the newest batch pulled;
/// split where the next part would pass `max_bytes`. Returns the new
/// position (unchanged if nothing was selected) and the updates queued.
pub fn merge<'a>(
    out: &mut Outbox,
    items: impl IntoIterator<Item = &'a Item>,
    selection: &Selection,
    mut position: u64,
    head_seq: u64,
    max_bytes: usize,
) -> (u64, u64) {
    let mut delta = out.delta(position);
    let mut to_seq = position;
    let mut updates = 0;
    for item in items {
        let b = &item.batch;
        // Behind the position: seen already. A batch that does not move
        // the seq (a cluster gateway's own statuses) at the position is
        // not.
        let local_here = b.from_seq == b.to_seq && b.to_seq == to_seq;
        if b.to_seq <= to_seq && !local_here {
            continue;
        }
        // The shared part holds for any position before the batch; one
        // inside it (a resume to a seq of another node) takes its own.
        let assembled;
        let part = if to_seq <= b.from_seq {
            item.part.as_ref()
        } else {
            assembled = b.assemble(selection, to_seq);
            assembled.as_ref()
        };
        if let Some(part) = part {
            if delta.len() + part.bytes.len() > max_bytes && !delta.is_empty() {
                delta.close(to_seq, false);
                position = to_seq;
                delta = out.delta(to_seq);
            }
            updates += part.updates;
            delta.push_shared(&part.bytes);
        }
        to_seq = b.to_seq;
    }
    let end = head_seq.max(to_seq);
    if delta.close(end, false) {
        position = end;
    }
    (position, updates)
}

/// Wraps a body as `ServerMessage` oneof field `field`.
fn wrap(field: u32, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 1 + encoded_len_varint(body.len() as u64));
    encode_key(field, WireType::LengthDelimited, &mut buf);
    encode_varint(body.len() as u64, &mut buf);
    buf.put_slice(body);
    buf.freeze()
}

/// `Catalog` chunks of about `CHUNK_BYTES`, `last` on the final one (also
/// when empty, so a client always sees the end).
pub fn catalog_frames(catalog: &Catalog, ids: &[TagId], out: &mut Outbox) {
    let mut body = BytesMut::new();
    for info in ids.iter().filter_map(|id| catalog.encoded_info(*id)) {
        if !body.is_empty() && body.len() + info.len() > CHUNK_BYTES {
            out.message(wrap(2, &body.split()));
        }
        body.put_slice(info);
    }
    encode_key(2, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    out.message(wrap(2, &body));
}

/// One `BrowseResult` of `ids`, their `TagInfo`s shared with Catalog
/// (both carry them as field 1).
pub fn browse_result(catalog: &Catalog, request_id: u64, ids: &[TagId], next_after: &str) -> Bytes {
    let mut body = BytesMut::new();
    for info in ids.iter().filter_map(|id| catalog.encoded_info(*id)) {
        body.put_slice(info);
    }
    if request_id != 0 {
        encode_key(2, WireType::Varint, &mut body);
        encode_varint(request_id, &mut body);
    }
    if !next_after.is_empty() {
        prost::encoding::string::encode(3, &next_after.to_string(), &mut body);
    }
    wrap(9, &body)
}

/// `Snapshot` chunks at `seq`, `last` on the final one.
pub fn snapshot_frames(table: &TagTable, ids: &[TagId], seq: u64, out: &mut Outbox) {
    let header = |buf: &mut BytesMut| {
        if seq != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(seq, buf);
        }
    };
    let mut body = BytesMut::new();
    header(&mut body);
    for id in ids {
        if body.len() >= CHUNK_BYTES {
            out.message(wrap(3, &body.split()));
            header(&mut body);
        }
        if let Some(state) = table.state(*id) {
            encode_update(2, *id, state, &mut body);
        }
    }
    encode_key(3, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    out.message(wrap(3, &body));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Batch;
    use crate::engine::batch::Builder;
    use crate::engine::selection::Selections;
    use crate::engine::table::TagState;
    use crate::proto::server_message::Kind;
    use crate::sample::TagDef;
    use crate::sample::Value;
    use prost::Message as _;
    use std::sync::Arc;

    fn state(seq: u64) -> TagState {
        TagState {
            value: Some(Value::F64(seq as f64)),
            status: 0,
            source_time_us: 1,
            server_time_us: 2,
            seq,
        }
    }

    /// Three batches of two changes each, seqs 1..=6; tag 3 is `b/z`.
    fn batches(catalog: &Catalog) -> Vec<Arc<Batch>> {
        let mut b = Builder::default();
        (0..3u64)
            .map(|i| {
                let (s1, s2) = (i * 2 + 1, i * 2 + 2);
                b.push(1, s1, &state(s1));
                b.push(if i == 1 { 3 } else { 2 }, s2, &state(s2));
                Arc::new(b.finish(i * 2, s2, catalog, 0))
            })
            .collect()
    }

    /// The shard's items of `batches` for `selection`.
    fn items(batches: &[Arc<Batch>], selection: &Selection) -> Vec<Item> {
        batches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let part = b.assemble(selection, b.from_seq)?;
                Some(Item {
                    index: i as u64,
                    batch: b.clone(),
                    part: Some(part),
                })
            })
            .collect()
    }

    fn deltas(out: &mut Outbox) -> Vec<proto::Delta> {
        out.take_frames()
            .into_iter()
            .map(
                |(_, payload)| match proto::ServerMessage::decode(&payload[..]) {
                    Ok(proto::ServerMessage {
                        kind: Some(Kind::Delta(d)),
                    }) => d,
                    other => panic!("not a delta: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn drained_batches_merge_into_continuous_deltas_split_at_the_cap() {
        let catalog = Catalog::new(["a/x", "a/y", "b/z"].map(|n| TagDef::read_only(n, "s")));
        let batches = batches(&catalog);
        let sels = Selections::default();
        let all = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["#".into()],
            None,
            &catalog,
        );
        let part = batches[0].bytes.len();

        // No cap reached: one Delta 0 -> 6 with all six updates.
        let mut out = Outbox::default();
        assert_eq!(
            merge(&mut out, &items(&batches, &all), &all, 0, 6, usize::MAX),
            (6, 6)
        );
        let d = deltas(&mut out);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (0, 6, 6));

        // A cap of two parts: 0 -> 4, then 4 -> 6, continuous.
        assert_eq!(
            merge(&mut out, &items(&batches, &all), &all, 0, 6, 2 * part),
            (6, 6)
        );
        let d = deltas(&mut out);
        let spans: Vec<_> = d
            .iter()
            .map(|d| (d.from_seq, d.to_seq, d.updates.len()))
            .collect();
        assert_eq!(spans, [(0, 4, 4), (4, 6, 2)]);

        // Already past the first batch: it is skipped.
        assert_eq!(
            merge(&mut out, &items(&batches, &all), &all, 2, 6, usize::MAX),
            (6, 4)
        );
        let d = deltas(&mut out);
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (2, 6, 4));

        // Only b/z (changed in the middle batch): the Delta still runs to
        // the newest batch's seq, so the next one starts where this ends.
        let only_z = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["b/#".into()],
            None,
            &catalog,
        );
        assert_eq!(
            merge(
                &mut out,
                &items(&batches, &only_z),
                &only_z,
                0,
                6,
                usize::MAX
            ),
            (6, 1)
        );
        let d = deltas(&mut out);
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (0, 6, 1));

        // Nothing selected: no frame, position unchanged.
        let none = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["c/#".into()],
            None,
            &catalog,
        );
        assert_eq!(
            merge(&mut out, &items(&batches, &none), &none, 0, 6, usize::MAX),
            (0, 0)
        );
        assert!(out.is_empty());
    }
}
