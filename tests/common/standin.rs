//! A stand-in for a running lnd (`examples/lnd_standin.rs`): a process that
//! holds the KV store open and writes to it as lnd would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `lnd_standin` example binary of this build: next to the test binary,
/// `target/<profile>/deps/<test>-<hash>` → `target/<profile>/examples/lnd_standin`.
/// `cargo test --test <name>` does not build examples, so it is built here
/// once per test process (`cargo build --example lnd_standin` with the same
/// profile and target directory; a no-op when it is up to date).
pub fn lnd_standin_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name")
            .to_string();
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args([
            "build",
            "--quiet",
            "--example",
            "lnd_standin",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            other => {
                c.args(["--profile", other]);
            }
        }
        let status = c.status().expect("run cargo build --example lnd_standin");
        assert!(status.success(), "cargo build --example lnd_standin failed");
        let bin = profile_dir.join("examples").join("lnd_standin");
        assert!(bin.is_file(), "no stand-in at {}", bin.display());
        bin
    })
    .clone()
}

/// Starts the lnd stand-in on the KV store `kv` with `args` (see
/// `examples/lnd_standin.rs`), stdout piped, and waits for its `opened …`
/// line, so that the store is open (and its journal mode set) on return.
/// Returns the child and a reader of its further stdout lines.
pub fn lnd_standin(
    kv: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = Command::new(lnd_standin_bin())
        .arg("--kv")
        .arg(kv)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lnd_standin");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines
        .next()
        .expect("lnd_standin printed nothing")
        .expect("read stdout");
    assert!(first.starts_with("opened "), "lnd_standin said {first:?}");
    (child, lines)
}
