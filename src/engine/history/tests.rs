use super::*;
use crate::status;

fn state(v: f64, t: i64, status: u32) -> TagState {
    TagState {
        value: Some(Value::F64(v)),
        status,
        source_time_us: t,
        server_time_us: t,
        seq: 0,
    }
}

fn writer(window_s: u64, points: usize, memory: u64) -> Writer {
    Writer::new(HistoryConfig {
        window: Duration::from_secs(window_s),
        max_points_per_tag: points,
        max_memory: bytesize::ByteSize::b(memory),
    })
}

fn all(seq: u64) -> Query {
    Query::new(0, 0, seq, 0)
}

fn values(s: &Series) -> Vec<f64> {
    s.points
        .iter()
        .filter_map(|p| p.1.as_ref().and_then(Value::as_f64))
        .collect()
}

#[test]
fn a_point_is_32_bytes() {
    assert_eq!(POINT_BYTES, 32);
}

#[test]
fn a_tag_with_history_off_has_no_series_and_one_on_keeps_each_change() {
    let mut w = writer(600, 100, 1 << 20);
    w.define(1, true);
    w.define(2, false);
    for i in 1..=5 {
        w.record(1, i, &state(i as f64, i as i64 * 1000, 0), 10_000);
        w.record(2, i + 5, &state(i as f64, i as i64 * 1000, 0), 10_000);
    }
    let s = w.store().read(1, &all(100)).expect("on");
    assert_eq!(values(&s), [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(s.complete && !s.decimated);
    assert!(w.store().read(2, &all(100)).is_none(), "off");
    assert!(w.store().read(3, &all(100)).is_none(), "unknown");
    // Turned off later: its points go.
    let before = w.bytes();
    w.define(1, false);
    assert!(w.store().read(1, &all(100)).is_none());
    assert!(w.bytes() < before);
}

#[test]
fn max_points_per_tag_and_the_window_cut_the_oldest_and_say_incomplete() {
    let mut w = writer(10, 4, 1 << 20);
    w.define(1, true);
    for i in 1..=6 {
        w.record(1, i, &state(i as f64, i as i64 * 1_000_000, 0), 7_000_000);
    }
    let s = w.store().read(1, &all(100)).expect("on");
    assert_eq!(values(&s), [3.0, 4.0, 5.0, 6.0], "the newest four");
    assert!(!s.complete, "asked from the start, two were cut");
    // From a start after the last cut point, the kept values reach back.
    let q = Query::new(3_000_000, 0, 100, 0);
    assert!(w.store().read(1, &q).expect("on").complete);
    // Time passes: the window (10 s) drops points older than now - 10 s.
    w.record(1, 7, &state(7.0, 14_000_000, 0), 15_000_000);
    let s = w.store().read(1, &all(100)).expect("on");
    assert_eq!(values(&s), [5.0, 6.0, 7.0]);
    // A start and an end in the past bound the series.
    let q = Query::new(5_500_000, 6_500_000, 100, 0);
    assert_eq!(values(&w.store().read(1, &q).expect("on")), [6.0]);
}

#[test]
fn points_after_the_connections_seq_are_not_in_its_answer() {
    let mut w = writer(600, 100, 1 << 20);
    w.define(1, true);
    for i in 1..=5 {
        w.record(1, i * 10, &state(i as f64, i as i64, 0), 10);
    }
    let s = w.store().read(1, &all(30)).expect("on");
    assert_eq!(values(&s), [1.0, 2.0, 3.0], "the state at seq 30 is last");
}

#[test]
fn decimation_keeps_a_one_sample_spike_and_a_bad_episode() {
    // 10,000 points of a flat line, one spike, one short Bad episode.
    let mut points: Vec<(i64, Option<f64>, u32)> =
        (0..10_000).map(|i| (i64::from(i), Some(1.0), 0)).collect();
    points[3_333].1 = Some(1_000.0);
    for p in &mut points[7_000..7_003] {
        p.2 = status::BAD_TIMEOUT;
    }
    let keep = decimate(&points, 400);
    assert!(keep.len() <= 800, "{} points", keep.len());
    assert!(keep.contains(&3_333), "the spike");
    assert!(
        keep.contains(&7_000) && keep.contains(&7_003),
        "into Bad and out"
    );
    assert!(keep.contains(&0) && keep.contains(&9_999), "first and last");
    assert!(keep.windows(2).all(|w| w[0] < w[1]), "in order");
    // Fewer points than asked: all of them.
    assert_eq!(decimate(&points[..100], 400).len(), 100);
}

#[test]
fn a_flapping_status_keeps_answers_within_twice_max_points() {
    let points: Vec<(i64, Option<f64>, u32)> = (0..50_000)
        .map(|i| (i64::from(i), Some(0.0), (i % 2) as u32))
        .collect();
    let keep = decimate(&points, 100);
    assert!(keep.len() <= 200, "{} points", keep.len());
}

#[test]
fn texts_are_kept_and_counted() {
    let mut w = writer(600, 100, 1 << 20);
    w.define(1, true);
    let text = |s: &str, seq: u64| TagState {
        value: Some(Value::Text(s.into())),
        status: 0,
        source_time_us: seq as i64,
        server_time_us: 0,
        seq,
    };
    let before = w.bytes();
    w.record(1, 1, &text("open", 1), 1);
    w.record(1, 2, &text("closed", 2), 2);
    w.record(1, 3, &state(3.0, 3, 0), 3);
    let s = w.store().read(1, &all(9)).expect("on");
    assert_eq!(
        s.points.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
        [
            Some(Value::Text("open".into())),
            Some(Value::Text("closed".into())),
            Some(Value::F64(3.0))
        ]
    );
    assert!(w.bytes() >= before + 10, "the texts' bytes are counted");
}

#[test]
fn max_memory_holds_under_a_flood_of_new_tags() {
    // 1 MiB for up to 1,000 points per tag: 20,000 tags changing.
    let budget = 1 << 20;
    let mut w = writer(600, 1000, budget);
    let mut admitted = 0;
    for id in 1..=20_000u32 {
        let on = w.admits(None);
        admitted += u32::from(on);
        w.define(id, on);
        for k in 0..3 {
            let seq = u64::from(id) * 3 + k;
            w.record(id, seq, &state(k as f64, seq as i64, 0), 1);
        }
        if id % 100 == 0 {
            w.sweep(1);
        }
        // Over by at most what the trims have not reached yet while the
        // limit falls with each new tag (a few per cent).
        let slack = budget as usize / 20;
        assert!(
            w.bytes() <= budget as usize + slack,
            "{} bytes at tag {id}",
            w.bytes()
        );
    }
    for _ in 0..100 {
        w.sweep(1);
    }
    assert!(w.bytes() <= budget as usize, "{} bytes", w.bytes());
    assert!(w.limit() < 1000, "the rings shrank: {}", w.limit());
    // Rings shrink to one point before new tags are refused: then each
    // ring and its point fit, and no more.
    let per_tag = (RING_BYTES + POINT_BYTES) as u32;
    assert_eq!(admitted, (budget / u64::from(per_tag)) as u32);
    // Each admitted tag still has its newest change; the rest none.
    let s = w.store().read(admitted, &all(u64::MAX)).expect("on");
    assert_eq!(values(&s), [2.0]);
    assert!(w.store().read(admitted + 1, &all(u64::MAX)).is_none());
}

#[test]
fn a_rebirth_loop_does_not_grow_the_rings() {
    let mut w = writer(600, 100, 1 << 20);
    for round in 0..1_000 {
        for id in 1..=10 {
            w.define(id, round % 2 == 0);
            w.record(id, round * 10 + u64::from(id), &state(1.0, 1, 0), 1);
        }
    }
    w.sweep(1);
    assert!(w.bytes() <= 10 * (RING_BYTES + 100 * POINT_BYTES));
}
