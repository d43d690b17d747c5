//! The side-by-side tables for BENCHMARKS.md.

use super::{P99_LIMIT_US, PeerRun, TOPICS};

/// The tables for BENCHMARKS.md.
pub fn markdown(runs: &[PeerRun], subscribers: usize) -> String {
    let mut s = format!(
        "{subscribers} subscribers, {TOPICS} topics, pass = p99 <= {} ms and nothing lost\n\n",
        P99_LIMIT_US / 1000
    );
    s.push_str("| server | highest passing rate (msg/s) | deliveries/s there | p99 there (ms) | server CPU (cores) | server RSS (MiB) | RSS per idle subscriber (KB) |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for run in runs {
        match run.best() {
            Some(b) => s.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} | {:.2} | {:.1} | {:.1} |\n",
                run.peer.name(),
                b.rate,
                b.per_s,
                b.p99,
                b.cpu + b.relay_cpu,
                b.rss_mib,
                run.rss_per_conn / 1000.0
            )),
            None => s.push_str(&format!(
                "| {} | none | | | | | {:.1} |\n",
                run.peer.name(),
                run.rss_per_conn / 1000.0
            )),
        }
    }
    s.push_str("\n| server | rate (msg/s) | deliveries/s | delivered / published×subs | p50 (ms) | p99 (ms) | max (ms) | server CPU | relay CPU | generator µs/delivery | pass |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for run in runs {
        for st in &run.steps {
            let expected = (st.published * subscribers as u64).max(1) as f64;
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.4} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} |\n",
                run.peer.name(),
                st.rate,
                st.per_s,
                st.delivered as f64 / expected,
                st.p50,
                st.p99,
                st.max,
                st.cpu,
                st.relay_cpu,
                st.generator_us,
                if st.pass { "yes" } else { "no" }
            ));
        }
    }
    s
}
