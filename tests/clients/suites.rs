//! The TypeScript and Python SDKs' own suites (node's test runner, pytest)
//! and the web view's headless-Chromium test, each against the
//! `tagstream` binary this build made (TAGSTREAM_BIN). `.ci/run` installs
//! what they need (`npm ci`, the PyPI packages, Debian's chromium); on a
//! machine without them each prints SKIPPED, and fails under
//! TAGSTREAM_REQUIRE_ALL=1.

use std::path::{Path, PathBuf};
use std::process::Command;

use tagstream_testkit::{find_program, present};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir` with TAGSTREAM_BIN set; fails with its
/// output unless it succeeds.
fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TAGSTREAM_BIN", env!("CARGO_BIN_EXE_tagstream"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} in {}:\n{text}",
        dir.display()
    );
    // The suite's own summary, for the log.
    for line in text
        .lines()
        .filter(|l| l.starts_with("# pass") || l.contains(" passed"))
    {
        eprintln!("{}: {line}", dir.display());
    }
}

fn node_ready() -> bool {
    present("`npm` is installed", find_program("npm").is_some())
        && present(
            "the npm workspace is installed (`npm ci` at the repository root)",
            root().join("node_modules/@bufbuild/protobuf").is_dir(),
        )
}

/// One test for both: the web view's test uses the SDK's build and
/// harness, which the SDK's suite builds first.
#[test]
fn typescript_sdk_and_the_web_view_in_chromium() {
    if !node_ready() {
        return;
    }
    run(&root().join("clients/typescript"), "npm", &["test"]);
    let chromium = std::env::var("TAGSTREAM_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    if present(
        &format!("Chromium is at {chromium}"),
        Path::new(&chromium).is_file(),
    ) {
        run(&root().join("web"), "npm", &["test"]);
    }
}

#[test]
fn python_sdk() {
    let python = find_program("python3");
    if !present("`python3` is installed", python.is_some()) {
        return;
    }
    let probe = Command::new("python3")
        .args(["-c", "import websockets, google.protobuf, pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present(
        "Python has websockets, protobuf and pytest (python3 -m pip install -e 'clients/python[dev]')",
        probe,
    ) {
        return;
    }
    run(
        &root().join("clients/python"),
        "python3",
        &["-m", "pytest", "-q"],
    );
}
