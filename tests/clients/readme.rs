//! The README's quick starts, run the way a user runs them (issue 24 item
//! 4), each against a real `tagstream demo`: the command lines under
//! "While the demo runs" with the built binary, the Python snippet in a
//! fresh venv after `pip install clients/python`, the Rust snippet in a
//! scratch cargo project with the README's path dependency, and (from
//! `suites`) the TypeScript snippet in a scratch npm project holding the
//! packed tarball. The snippets are read from README.md at run time, so a
//! README that stops working fails here. One change is made to them: the
//! demo's address `127.0.0.1:8080` becomes this demo's port (tests run
//! side by side), and the CLI lines get it from `TAGSTREAM_URL`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tagstream_testkit::{Scratch, find_program, free_port, present};

use crate::{root, run};

const DEADLINE: Duration = Duration::from_secs(60);
/// The demo's address as the README writes it.
const README_ADDR: &str = "127.0.0.1:8080";

/// A `tagstream demo` child on a free port, killed on drop.
pub(crate) struct Demo {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
}

impl Demo {
    /// Starts one and waits until `/readyz` answers 200.
    pub(crate) fn start() -> Demo {
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let child = Command::new(env!("CARGO_BIN_EXE_tagstream"))
            .args(["demo", "--listen", &addr])
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let demo = Demo { child, addr };
        let until = Instant::now() + DEADLINE;
        while !http_get(&demo.addr, "/readyz").starts_with("HTTP/1.1 200") {
            assert!(Instant::now() < until, "the demo never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        demo
    }

    /// A README snippet pointed at this demo.
    pub(crate) fn local(&self, snippet: &str) -> String {
        snippet.replace(README_ADDR, &self.addr)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET; "" when nothing answers.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write as _;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if s.write_all(request.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

/// The first fenced block of `lang` after the README line containing
/// `marker`.
pub(crate) fn snippet(marker: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README no longer says {marker:?}"));
    let fence = format!("```{lang}\n");
    let start = readme[from..]
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} block after {marker:?}"))
        + from
        + fence.len();
    let len = readme[start..].find("```").expect("the block ends");
    readme[start..start + len].to_string()
}

/// A child's stdout lines, read on a thread so a deadline can cut them.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut command: Command) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let read = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let lines = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        Lines {
            child,
            lines,
            stderr,
        }
    }

    /// Lines until `done` says the output is complete; panics at the
    /// deadline with what came, stderr included.
    fn until(&mut self, what: &str, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let until = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let err: Vec<String> = self.stderr.try_iter().collect();
                    panic!("{what}: output ended or stalled\nstdout: {seen:#?}\nstderr: {err:#?}");
                }
            }
        }
        seen
    }

    /// Waits for the child to exit by itself; its status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                let err: Vec<String> = self.stderr.try_iter().collect();
                return (status, err.join("\n"));
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!("still running after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A change line of a quick start: `plant/... <value> [unit]`.
fn changes(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.starts_with("plant/")).count()
}

/// The words of one shell line, single quotes honoured, comment dropped.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            '#' if !quoted && !any => break,
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[test]
fn the_words_of_a_readme_line() {
    assert_eq!(
        words("cargo run --release -- tail 'plant/#'   # every tag, live"),
        ["cargo", "run", "--release", "--", "tail", "plant/#"]
    );
    assert_eq!(words("a 'b c'd"), ["a", "b cd"]);
}

/// "While the demo runs, watch it from a second terminal": every line,
/// `cargo run --release --` being the built binary.
#[test]
fn the_readme_command_lines_work_against_the_demo() {
    let demo = Demo::start();
    let block = snippet("While the demo runs", "sh");
    // Lines run or (a missing curl) skipped out loud; none unknown.
    let mut known = 0;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let words = words(line);
        if let Some(args) =
            words.strip_prefix(&["cargo", "run", "--release", "--"].map(String::from))
        {
            let mut command = Command::new(env!("CARGO_BIN_EXE_tagstream"));
            command
                .args(args)
                .env("TAGSTREAM_URL", format!("ws://{}/api/v1/stream", demo.addr));
            match args[0].as_str() {
                "tail" => {
                    let pattern = args.last().unwrap().trim_end_matches(['#', '+']);
                    let seen = Lines::spawn(command).until(line, |seen| seen.len() >= 2);
                    for l in &seen {
                        assert!(l.starts_with(pattern), "{line}: {l}");
                    }
                }
                "write" => {
                    let (status, err) = Lines::spawn(command).finish();
                    assert!(status.success(), "{line}: {status}\n{err}");
                }
                other => panic!("the test does not know `{other}` ({line})"),
            }
        } else if words[0] == "curl" {
            if !present(
                "`curl` is installed (apt-get install curl)",
                find_program("curl").is_some(),
            ) {
                known += 1;
                continue;
            }
            let mut command = Command::new("sh");
            command.args(["-c", &demo.local(line)]);
            let seen = Lines::spawn(command).until(line, |seen| {
                seen.iter().any(|l| l.starts_with("tagstream_device_up"))
            });
            assert!(seen.iter().all(|l| l.contains("tagstream_")), "{seen:?}");
        } else {
            panic!("the test does not know this README line: {line}");
        }
        known += 1;
    }
    assert!(known >= 5, "{block}");
}

/// The Python quick start in a fresh venv holding `pip install
/// clients/python` (from a copy of it, so no build files land in the
/// repository), run as `python main.py`.
#[test]
fn the_readme_python_quick_start_in_a_fresh_venv() {
    if !present(
        "`python3 -m venv` works (apt-get install python3-venv)",
        find_program("python3").is_some()
            && Command::new("python3")
                .args(["-c", "import venv, ensurepip"])
                .status()
                .is_ok_and(|s| s.success()),
    ) {
        return;
    }
    let scratch = Scratch::new("readme-py").unwrap();
    let package = scratch.path("tagstream-client");
    copy_dir(&root().join("clients/python"), &package);
    let venv = scratch.path("venv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(&package)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&pip.stderr);
    if !pip.status.success() {
        // Offline: the dependencies (websockets, protobuf, setuptools)
        // come from PyPI, as they do for a user.
        let offline = [
            "NewConnectionError",
            "No matching distribution",
            "Temporary failure",
        ]
        .iter()
        .any(|s| said.contains(s));
        assert!(offline, "pip install clients/python: {said}");
        present(
            &format!("PyPI is reachable for `pip install clients/python` ({said})"),
            false,
        );
        return;
    }

    let demo = Demo::start();
    let main = scratch.path("main.py");
    std::fs::write(
        &main,
        demo.local(&snippet("Python (`clients/python`", "python")),
    )
    .unwrap();
    let mut command = Command::new(venv.join("bin/python"));
    command.arg(&main).current_dir(scratch.dir());
    // It prints the write's outcome, then changes until stopped: among
    // them the setpoint it wrote, at the tag's decimals.
    let seen = Lines::spawn(command).until("python main.py", |seen| {
        seen.iter()
            .any(|l| l.starts_with("plant/boiler1/setpoint 65.0 degC"))
    });
    assert!(
        seen[0].contains("Good"),
        "the write's outcome first: {seen:?}"
    );
}

/// The Rust quick start in a scratch cargo project: the README's
/// `Cargo.toml` lines (the path pointed at this checkout) and its snippet
/// as the body of `main`. Built offline with this checkout's lock file,
/// in a target directory of its own under `target/` (kept between runs).
#[test]
fn the_readme_rust_quick_start_as_a_path_dependency() {
    let scratch = Scratch::new("readme-rs").unwrap();
    let project = scratch.path("quick-start");
    std::fs::create_dir_all(project.join("src")).unwrap();
    let deps = snippet("Rust (`clients/rust`", "toml").replace(
        "../tagstream/clients/rust",
        root().join("clients/rust").to_str().unwrap(),
    );
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"quick-start\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n{deps}\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::copy(root().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let demo = Demo::start();
    let body = demo.local(&snippet("Rust (`clients/rust`", "rust"));
    std::fs::write(
        project.join("src/main.rs"),
        format!(
            "#[tokio::main]\nasync fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {{\n\
             {body}Ok(())\n}}\n"
        ),
    )
    .unwrap();
    let target = root().join("target/readme-quick-start");
    run(Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&project));

    // It prints changes until the write is answered, then the outcome,
    // and ends.
    let mut lines = Lines::spawn(Command::new(target.join("debug/quick-start")));
    let seen = lines.until("the quick start", |seen| {
        seen.iter().any(|l| l.starts_with("WriteOutcome"))
    });
    assert!(changes(&seen) >= 1, "changes before the outcome: {seen:?}");
    let outcome = seen.last().unwrap();
    assert!(outcome.contains("Good"), "{outcome}");
    let (status, err) = lines.finish();
    assert!(status.success(), "{status}\n{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let skip = name.to_string_lossy();
        if skip.ends_with(".egg-info") || skip.starts_with('.') || skip == "__pycache__" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The TypeScript quick start in `project` (a scratch npm project holding
/// the packed SDK and `ws`), run as `node quick-start.mjs`: it writes,
/// browses and closes, so it ends by itself.
pub(crate) fn typescript_quick_start(project: &Path) {
    let demo = Demo::start();
    let script = project.join("quick-start.mjs");
    std::fs::write(
        &script,
        demo.local(&snippet("TypeScript (`clients/typescript`", "ts")),
    )
    .unwrap();
    let mut command = Command::new("node");
    command.arg(&script).current_dir(project);
    let mut lines = Lines::spawn(command);
    let seen = lines.until("node quick-start.mjs", |seen| {
        seen.iter().any(|l| l == "state live") && changes(seen) >= 1
    });
    let (status, err) = lines.finish();
    assert!(status.success(), "{status}\n{err}\n{seen:?}");
}
