//! The `mesh-agent` binary's tools, run as a user would run them.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use mesh_agent::admin::{self, AdminState};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(args)
        // Keep the developer's own settings out of the test.
        .env_remove("MESH_AGENT_CONFIG")
        .env_remove("MESH_AGENT_TRUST_DOMAIN")
        .env_remove("MESH_AGENT_ADMIN_ADDR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `sleep` running as uid/gid 65534, once it has exec'd.
fn sleeper_as_nobody() -> Reaped {
    let child = Reaped(
        Command::new("sleep")
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap(),
    );
    let exe = format!("/proc/{}/exe", child.0.id());
    for _ in 0..200 {
        if std::fs::read_link(&exe).is_ok_and(|p| p.ends_with("sleep")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn check_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.toml");
    let out = agent(&["check-config", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok (trust domain example.org, 4 entries"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_config_prints_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "svid_ttl = \"1 hour\"\n\n[[entries]]\nspiffe_id = \"spiffe://other.org/x\"\nselectors = [\"unix:uid:1\"]\n",
    )
    .unwrap();
    let out = agent(&["check-config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let f = file.display();
    assert!(err.contains(&format!("{f}:1:12: svid_ttl:")), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:4:13: `spiffe://other.org/x` is not in the trust domain"
        )),
        "{err}"
    );
}

#[test]
fn explain_without_config_shows_the_uid_template_identity() {
    let child = sleeper_as_nobody();
    let out = agent(&["explain", "--pid", &child.0.id().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("  unix:uid:65534\n"), "{text}");
    assert!(
        text.contains("  unix:path:/usr/bin/sleep\n") || text.contains("unix:path:/bin/sleep"),
        "{text}"
    );
    assert!(
        text.contains("identities: spiffe://example.org/unix/uid/65534"),
        "{text}"
    );
}

#[test]
fn explain_lists_matches_and_missing_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        r#"
[[entries]]
spiffe_id = "spiffe://example.org/root-only"
selectors = ["unix:uid:0"]

[[entries]]
spiffe_id = "spiffe://example.org/nobody"
selectors = ["unix:uid:65534", "unix:gid:65534"]
"#,
    )
    .unwrap();
    let child = sleeper_as_nobody();
    let pid = child.0.id().to_string();

    let out = agent(&["explain", "--pid", &pid, "--config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "spiffe://example.org/root-only  [entry at line 2]\n    no match, missing: unix:uid:0"
        ),
        "{text}"
    );
    assert!(
        text.contains("spiffe://example.org/nobody  [entry at line 6]\n    MATCH (default)"),
        "{text}"
    );

    let out = agent(&[
        "explain",
        "--pid",
        &pid,
        "--config",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["process"]["uid"], 65534);
    let entries = v["explanation"]["entries"].as_array().unwrap();
    assert_eq!(entries[0]["matched"], false);
    assert_eq!(entries[0]["missing"][0], "unix:uid:0");
    assert_eq!(entries[1]["matched"], true);
    assert_eq!(entries[1]["default"], true);
}

#[test]
fn explain_of_a_missing_process_fails() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let out = agent(&["explain", "--pid", &pid.to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("process {pid} is gone")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn healthcheck_follows_readiness() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = AdminState::default();
    let server = rt
        .block_on(admin::start(
            "127.0.0.1:0".parse().unwrap(),
            state.clone(),
            std::future::pending(),
        ))
        .unwrap();
    let addr = server.local_addr.to_string();

    let out = agent(&["healthcheck", "--admin-addr", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "not ready\n");

    state.readiness.set_ready(true);
    let out = agent(&["healthcheck", "--admin-addr", &addr]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ready\n");

    server.task.abort();
    drop(rt);
    let out = agent(&["healthcheck", "--admin-addr", &addr, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the admin server"),
        "{}",
        stderr(&out)
    );
}
