//! Engine hot path: apply a batch of samples to the table, encode each
//! change once, assemble per-subscription Delta parts from the shared
//! bytes, and fan one batch out to 1,000 sessions. Many-socket runs go
//! through `tagstream bench`, not here.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tagstream::engine::Engine;
use tagstream::engine::catalog::{Catalog, TagDef};
use tagstream::engine::seq::Counter;
use tagstream::push::outbox::Outbox;
use tagstream::push::session::frames::merge;
use tagstream::push::shard::Shard;
use tagstream::sample::{Input, Sample, TagKey, Value};

const TAGS: u32 = 10_000;

fn engine_of_tags() -> Engine {
    let catalog = Catalog::new(
        (0..TAGS).map(|i| TagDef::read_only(format!("plant/area{}/tag{i}", i % 10), "bench")),
    );
    Engine::new(catalog, Box::new(Counter::random()))
}

fn samples(n: usize, round: u64) -> Vec<Input> {
    (0..n)
        .map(|i| {
            Input::Sample(Sample {
                tag: TagKey {
                    source: 0,
                    local: (i as u32 * 7919) % TAGS,
                },
                value: Some(Value::F64(round as f64 + i as f64)),
                status: 0,
                source_time_us: 1,
            })
        })
        .collect()
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for batch in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("apply_encode_batch_{batch}"), |b| {
            let mut engine = engine_of_tags();
            let mut round = 0u64;
            b.iter_batched(
                || {
                    round += 1;
                    samples(batch, round)
                },
                |s| engine.apply(s),
                BatchSize::SmallInput,
            );
        });
    }
    // Delta assembly: the shared frame for "everything" and a per-area
    // subscription, as each session would ask for it.
    let mut engine = engine_of_tags();
    let shared = engine.shared().clone();
    let batch = engine.apply(samples(1024, 1)).expect("changes");
    let all = shared.selections.get(
        &tagstream::auth::scope(vec!["#".into()]),
        vec!["#".into()],
        None,
        &shared.catalog(),
    );
    let area = shared.selections.get(
        &tagstream::auth::scope(vec!["#".into()]),
        vec!["plant/area3/#".into()],
        None,
        &shared.catalog(),
    );
    group.throughput(Throughput::Elements(1024));
    group.bench_function("delta_part_all_1024_uncached", |b| {
        b.iter(|| batch.assemble(&all, batch.from_seq));
    });
    group.bench_function("delta_part_area_of_1024_uncached", |b| {
        b.iter(|| batch.assemble(&area, batch.from_seq));
    });
    group.finish();
}

/// Fan-out: one batch of 64 changes to 1,000 sessions over 10 distinct
/// subscriptions: the shard pulls it and assembles each subscription's
/// part once, then each session takes its items, frames its Delta and
/// writes it (to a sink: the kernel's share is measured by
/// `tagstream-bench`, not here).
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut engine = engine_of_tags();
    let shared = engine.shared().clone();
    let catalog = shared.catalog();
    let selections: Vec<_> = (0..10)
        .map(|a| {
            shared.selections.get(
                &tagstream::auth::scope(vec!["#".into()]),
                vec![format!("plant/area{a}/#")],
                None,
                &catalog,
            )
        })
        .collect();
    let shard = Shard::new(
        shared.clone(),
        1 << 20,
        tagstream::telemetry::PushMetrics::new(),
    );
    let mut sessions: Vec<(Outbox, u64, u64)> = (0..1000)
        .map(|i| {
            let (_, cursor) = shard.join(&selections[i % selections.len()]);
            (Outbox::default(), cursor, 0)
        })
        .collect();
    let mut round = 0;
    group.throughput(Throughput::Elements(1000));
    group.bench_function("batch_64_to_1000_sessions", |b| {
        b.iter_batched(
            || {
                round += 1;
                engine.apply(samples(64, round)).expect("changes")
            },
            |batch| {
                runtime.block_on(async {
                    let mut sink = tokio::io::sink();
                    shard.advance();
                    for (i, (out, cursor, position)) in sessions.iter_mut().enumerate() {
                        let selection = &selections[i % selections.len()];
                        let start = (*position).max(batch.from_seq);
                        let next;
                        (next, (*position, _)) = shard.take(selection, *cursor, |taken| {
                            let merged =
                                merge(out, taken.items, selection, start, taken.head_seq, 1 << 20);
                            (taken.next, merged)
                        });
                        *cursor = next;
                        out.write_to(&mut sink).await.expect("sink");
                    }
                })
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// A HistoryResult made as a session's job makes it (read the rings, thin,
/// encode): 100 tags of `points` each, asked with `max_points`; and the
/// engine's cost of recording a change.
fn history(c: &mut Criterion) {
    use tagstream::engine::history::{HistoryConfig, Query, Writer};
    use tagstream::engine::table::TagState;
    use tagstream::push::session::history::HistoryJob;
    let mut group = c.benchmark_group("history");
    group.sample_size(20);
    for (points, max_points) in [(2400usize, 5000u32), (5000, 5000), (5000, 240)] {
        let mut writer = Writer::new(HistoryConfig {
            max_points_per_tag: points,
            max_memory: bytesize::ByteSize::gib(1),
            ..HistoryConfig::default()
        });
        let now = tagstream::sample::now_us();
        let mut seq = 0;
        for id in 1..=100u32 {
            writer.define(id, true);
            for k in 0..points {
                seq += 1;
                let state = TagState {
                    value: Some(Value::F64((k as f64 / 50.0).sin() * 100.0)),
                    status: 0,
                    source_time_us: now - (points - k) as i64 * 100_000,
                    server_time_us: now,
                    seq,
                };
                writer.record(id, seq, &state, now);
            }
        }
        let job = HistoryJob {
            request_id: 1,
            ids: (1..=100).collect(),
            query: Query::new(0, 0, seq, max_points),
            store: Some(writer.store().clone()),
        };
        group.throughput(Throughput::Elements(100 * points as u64));
        group.bench_function(format!("answer_100x{points}_max_{max_points}"), |b| {
            b.iter(|| job.answer());
        });
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("record_one_change", |b| {
        let mut writer = Writer::new(HistoryConfig::default());
        writer.define(1, true);
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            let state = TagState {
                value: Some(Value::F64(seq as f64)),
                status: 0,
                source_time_us: seq as i64,
                server_time_us: 0,
                seq,
            };
            writer.record(1, seq, &state, seq as i64);
        });
    });
}

criterion_group!(benches, engine, fan_out, history);
criterion_main!(benches);
