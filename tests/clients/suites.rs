//! The TypeScript and Python SDKs' own suites (node's test runner, pytest)
//! and the web view's headless-Chromium test, each against the
//! `tagstream` binary this build made (TAGSTREAM_BIN). `.ci/run` installs
//! what they need (`npm ci`, the PyPI packages, Debian's chromium); on a
//! machine without them each prints SKIPPED, and fails under
//! TAGSTREAM_REQUIRE_ALL=1.

use std::path::Path;
use std::process::Command;

use tagstream_testkit::{find_program, present};

use crate::root;

/// Runs `program args` in `dir` with TAGSTREAM_BIN set; fails with its
/// output unless it succeeds.
fn run(dir: &Path, program: &str, args: &[&str]) {
    let text = crate::run(
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("TAGSTREAM_BIN", env!("CARGO_BIN_EXE_tagstream")),
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
    present(
        "`npm` is installed (apt-get install nodejs npm, then npm ci at the root)",
        find_program("npm").is_some(),
    ) && present(
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
    installs_as_a_user_installs_it();
    let chromium = std::env::var("TAGSTREAM_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    if present(
        &format!("Chromium is at {chromium}"),
        Path::new(&chromium).is_file(),
    ) {
        run(&root().join("web"), "npm", &["test"]);
    }
}

/// The TypeScript SDK installed the way a user installs it, outside the
/// repository: from a packed tarball and from a path (its `prepare`
/// builds `dist`), then imported as the README shows; in the tarball's
/// project (with `ws`, as the README's snippet imports it) the README's
/// quick start runs against a demo. Offline-first: the
/// dependencies come from the cache `npm ci` filled. In the same test as
/// the suite, because both build `clients/typescript/dist`.
fn installs_as_a_user_installs_it() {
    let scratch = tagstream_testkit::Scratch::new("ts-install").unwrap();
    let sdk = root().join("clients/typescript");
    let packs = scratch.path("packs");
    std::fs::create_dir_all(&packs).unwrap();
    run(
        &sdk,
        "npm",
        &["pack", "--pack-destination", packs.to_str().unwrap()],
    );
    let tarball = std::fs::read_dir(&packs)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .expect("npm pack made a tarball");
    let script = "import { Client, formatValue } from \"@tagstream/client\";\n\
                  console.log(typeof Client, formatValue({ kind: { case: \"u64\", value: 7n } }));\n";
    for (name, from) in [("tarball", tarball), ("path", sdk.clone())] {
        let project = scratch.path(name);
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(
            project.join("package.json"),
            "{ \"name\": \"scratch\", \"private\": true, \"type\": \"module\" }\n",
        )
        .unwrap();
        std::fs::write(project.join("t.mjs"), script).unwrap();
        run(
            &project,
            "npm",
            &[
                "install",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                from.to_str().unwrap(),
                "ws@8",
            ],
        );
        let out = Command::new("node")
            .arg("t.mjs")
            .current_dir(&project)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim() == "function 7",
            "{name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if name == "tarball" {
            crate::readme::typescript_quick_start(&project);
        }
    }
}

#[test]
fn python_sdk() {
    let python = find_program("python3");
    if !present(
        "`python3` is installed (apt-get install python3)",
        python.is_some(),
    ) {
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
