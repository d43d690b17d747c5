//! tagstream's load generator: a tool beside the product, not in it. It
//! starts the server under test as a child process (`tagstream run` with a
//! configuration written for the run, usually a `[[sim]]` source) and
//! drives it with lean subscribers, so the server's CPU and memory are
//! read apart from the generator's.
//!
//! - [`scenario`]: named load shapes (`idle`, `room`, `wall`, `storm`).
//! - [`latency`]: one change on a real device or broker -> client decode.
//! - [`idle`]: RSS per idle connection of a `tagstream demo`.
//! - [`peers`]: Mosquitto, NATS and tagstream side by side.
//! - [`cluster`]: an edge and two gateways on a real nats-server.
//! - [`lean`]: the allocation-free subscriber; [`server`]: the child.

pub mod cluster;
pub mod idle;
pub mod latency;
pub mod lean;
pub mod peers;
pub mod scenario;
pub mod server;

use hdrhistogram::Histogram;

/// The measured numbers.
#[derive(Debug, Default)]
pub struct Report {
    /// name, value, unit
    pub rows: Vec<(String, f64, &'static str)>,
}

impl Report {
    /// Adds one row.
    pub fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        self.rows.push((name.to_string(), value, unit));
    }

    /// Adds the latency quantiles of a histogram (µs) as ms rows.
    pub fn latency<T: hdrhistogram::Counter>(&mut self, h: &Histogram<T>) {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            self.add(
                &format!("latency_{name}"),
                h.value_at_quantile(q) as f64 / 1000.0,
                "ms",
            );
        }
        self.add("latency_max", h.max() as f64 / 1000.0, "ms");
        self.add("samples", h.len() as f64, "");
    }

    /// One measured value by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    }

    /// A human table.
    pub fn table(&self) -> String {
        self.rows
            .iter()
            .map(|(n, v, u)| format!("{n:<28} {v:>14.3} {u}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let fields: Vec<String> = self
            .rows
            .iter()
            .map(|(n, v, _)| format!("\"{n}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// Raises RLIMIT_NOFILE to the hard limit (load runs open many sockets).
pub fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// Makes sure this process (and the server it starts, which inherits the
/// limit) may open `needed` descriptors: raises the soft limit, and the
/// hard one when allowed (root). A clear error instead of clients that
/// hang on `EMFILE` halfway through a run.
pub fn ensure_fd_limit(needed: u64) -> anyhow::Result<()> {
    raise_fd_limit();
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft >= needed {
        return Ok(());
    }
    if rlimit::Resource::NOFILE
        .set(needed, needed.max(hard))
        .is_ok()
    {
        return Ok(());
    }
    anyhow::bail!(
        "this run needs about {needed} file descriptors and the limit is {soft} (hard {hard}): raise it (`ulimit -n {needed}` as root, or LimitNOFILE) and run again"
    )
}

/// A latency histogram, µs, 1 µs .. 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// One subscriber's latency histogram: 2 significant digits (values within
/// 1%) and 32-bit counts. At 3 digits each one is 139 KB, 1.4 GB for 10,000
/// subscribers, and recording into them was 12% of the generator's CPU in
/// cache misses; this one is 10 KB.
pub fn subscriber_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static histogram bounds")
}
