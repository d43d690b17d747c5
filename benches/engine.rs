//! Engine hot path: apply a batch of samples to the table, encode each
//! change once, and assemble per-subscription Delta frames from the shared
//! bytes. Many-socket runs go through `tagstream bench`, not here.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tagstream::engine::EngineShared;
use tagstream::engine::batch::Builder;
use tagstream::engine::catalog::{Catalog, TagDef};
use tagstream::sample::{Sample, Value};

const TAGS: u32 = 10_000;

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::new((0..TAGS).map(|i| {
        TagDef::read_only(format!("plant/area{}/tag{i}", i % 10), "bench")
    })))
}

fn samples(n: usize, round: u64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            tag: (i as u32 * 7919) % TAGS + 1,
            value: Some(Value::F64(round as f64 + i as f64)),
            status: 0,
            source_time_us: 1,
        })
        .collect()
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for batch in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("apply_encode_batch_{batch}"), |b| {
            let shared = EngineShared::new(catalog());
            let mut scratch = Builder::default();
            let mut round = 0u64;
            b.iter_batched(
                || {
                    round += 1;
                    samples(batch, round)
                },
                |s| shared.apply_batch(s, &mut scratch),
                BatchSize::SmallInput,
            );
        });
    }
    // Delta assembly: the shared frame for "everything" and a per-area
    // subscription, as each session would ask for it.
    let shared = EngineShared::new(catalog());
    let mut scratch = Builder::default();
    let batch = shared
        .apply_batch(samples(1024, 1), &mut scratch)
        .expect("changes");
    let all = shared.selections.get(vec!["#".into()], &shared.catalog());
    let area = shared
        .selections
        .get(vec!["plant/area3/#".into()], &shared.catalog());
    group.throughput(Throughput::Elements(1024));
    group.bench_function("delta_frame_all_1024_uncached", |b| {
        b.iter(|| batch.assemble(&all, batch.from_seq));
    });
    group.bench_function("delta_frame_area_of_1024_uncached", |b| {
        b.iter(|| batch.assemble(&area, batch.from_seq));
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("delta_frame_shared_hit", |b| {
        b.iter(|| batch.frame_for(&all, batch.from_seq));
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
