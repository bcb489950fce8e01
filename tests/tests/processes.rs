//! Other processes against a real agent: callers under different uids, `mesh-agent explain` on
//! a running process, and py-spiffe, the standard Python client.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use mesh_e2e::{current_uid, mesh_agent, output_within, Agent, EVENT_TIMEOUT};

/// Env var naming the Python interpreter that has py-spiffe (scripts/test.sh sets it).
const PYTHON_ENV: &str = "MESH_TEST_PYTHON";

/// Runs `mesh-agent api …args` against `agent` as `uid` (with the same gid).
fn api_as(agent: &Agent, uid: u32, args: &[&str]) -> Output {
    api_as_group(agent, uid, uid, args)
}

/// Runs `mesh-agent api …args` against `agent` as `uid` and `gid`, with no supplementary
/// groups.
fn api_as_group(agent: &Agent, uid: u32, gid: u32, args: &[&str]) -> Output {
    let mut cmd = mesh_agent();
    cmd.arg("api")
        .args(args)
        .arg("--socket-path")
        .arg(agent.socket())
        .current_dir("/")
        .uid(uid)
        .gid(gid);
    output_within(cmd, EVENT_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `spiffe_id:` values a `mesh-agent api fetch` printed.
fn printed_ids(out: &Output) -> Vec<String> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("spiffe_id: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn processes_under_different_uids_get_their_own_identities() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches uids and must run as root"
    );
    let alice = "spiffe://example.org/user/2001";
    let bob = "spiffe://example.org/user/2002";
    let agent = Agent::start(&format!(
        "[[entries]]\nspiffe_id = \"{alice}\"\nselectors = [\"unix:uid:2001\"]\n\
         [[entries]]\nspiffe_id = \"{bob}\"\nselectors = [\"unix:uid:2002\"]\n"
    ));

    let out = api_as(&agent, 2001, &["fetch", "x509"]);
    assert!(out.status.success(), "uid 2001: {}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [alice]);

    let out = api_as(&agent, 2002, &["fetch", "x509"]);
    assert!(out.status.success(), "uid 2002: {}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [bob]);

    // Each may have a JWT-SVID of its own identity…
    let out = api_as(
        &agent,
        2001,
        &["fetch", "jwt", "--audience", "a", "--spiffe-id", alice],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [alice]);

    // …but not of the other's.
    let out = api_as(
        &agent,
        2001,
        &["fetch", "jwt", "--audience", "a", "--spiffe-id", bob],
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "uid 2001 got bob's token: {}",
        text(&out.stdout)
    );
    // The CLI prints the status with tonic's description of PermissionDenied.
    assert!(
        stderr.contains("does not have permission") && stderr.contains(bob),
        "the refusal is PermissionDenied and names the identity: {stderr}"
    );
    assert!(!text(&out.stdout).contains("token:"));

    // A uid with no entry gets nothing.
    let out = api_as(&agent, 2003, &["fetch", "x509"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no identity issued"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_entries_every_user_gets_the_identity_of_its_uid() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches uids and must run as root"
    );
    let agent = Agent::start("");

    for uid in [0, 2001, 2002] {
        let out = api_as(&agent, uid, &["fetch", "x509"]);
        assert!(out.status.success(), "uid {uid}: {}", text(&out.stderr));
        assert_eq!(
            printed_ids(&out),
            [format!("spiffe://example.org/unix/uid/{uid}")]
        );
    }
}

#[test]
fn cli_writes_pem_files_that_openssl_verifies_and_validates_tokens() {
    let id = "spiffe://example.org/billing/api";
    let agent = Agent::start(&format!(
        "[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n\
         dns_names = [\"billing.internal\"]\n",
        current_uid()
    ));
    let out_dir = agent.dir().join("pem");
    let dir = out_dir.to_str().unwrap();

    let out = api_as(&agent, current_uid(), &["fetch", "x509", "--write", dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [id]);
    let key_mode = std::fs::metadata(out_dir.join("svid_key.pem"))
        .expect("the key is written")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the key file is private");

    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out_dir.join("bundle.pem"))
        .arg(out_dir.join("svid.pem"))
        .output()
        .expect("openssl is installed (scripts/setup.sh installs it)");
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(out_dir.join("svid.pem"))
        .output()
        .expect("openssl x509");
    let san = text(&san.stdout);
    assert!(san.contains(&format!("URI:{id}")), "{san}");
    assert!(san.contains("DNS:billing.internal"), "{san}");
    // The key belongs to the certificate.
    let public = |args: &[&str], file: &str| {
        let out = Command::new("openssl")
            .args(args)
            .arg(out_dir.join(file))
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    };
    assert_eq!(
        public(&["x509", "-noout", "-pubkey", "-in"], "svid.pem"),
        public(&["pkey", "-pubout", "-in"], "svid_key.pem")
    );

    let out = api_as(
        &agent,
        current_uid(),
        &["fetch", "jwt", "--audience", "billing"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_owned))
        .expect("a token is printed");

    let out = api_as(
        &agent,
        current_uid(),
        &["validate", "jwt", "--audience", "billing", &token],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [id]);

    let out = api_as(
        &agent,
        current_uid(),
        &["validate", "jwt", "--audience", "payroll", &token],
    );
    assert!(
        !out.status.success(),
        "a token for another audience is valid"
    );
}

#[test]
fn entry_matches_only_when_every_selector_is_present() {
    assert_eq!(
        current_uid(),
        0,
        "this test switches uids and must run as root"
    );
    let both = "spiffe://example.org/batch/reports";
    let group = "spiffe://example.org/batch";
    let agent = Agent::start(&format!(
        "[[entries]]\nspiffe_id = \"{both}\"\nselectors = [\"unix:uid:2005\", \"unix:gid:3003\"]\n\
         [[entries]]\nspiffe_id = \"{group}\"\nselectors = [\"unix:gid:3003\"]\n"
    ));

    // Both selectors: both entries, in file order.
    let out = api_as_group(&agent, 2005, 3003, &["fetch", "x509"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [both, group]);

    // The group alone: only the group's entry.
    let out = api_as_group(&agent, 2006, 3003, &["fetch", "x509"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(printed_ids(&out), [group]);

    // The uid alone: nothing.
    let out = api_as_group(&agent, 2005, 3004, &["fetch", "x509"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no identity issued"));
}

/// A child process that lives until killed.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("cannot start sleep"),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn explain_lists_selectors_and_names_what_a_non_matching_entry_misses() {
    let uid = current_uid();
    let agent = Agent::create(&format!(
        "[[entries]]\nspiffe_id = \"spiffe://example.org/billing/api\"\n\
         selectors = [\"unix:uid:{uid}\"]\n\
         [[entries]]\nspiffe_id = \"spiffe://example.org/billing/db\"\n\
         selectors = [\"unix:uid:{uid}\", \"unix:gid:4242\"]\n"
    ));
    let child = Sleeper::start();

    let mut cmd = mesh_agent();
    cmd.arg("explain")
        .arg("--pid")
        .arg(child.0.id().to_string())
        .arg("--config")
        .arg(agent.config_path());
    let out = output_within(cmd, EVENT_TIMEOUT);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert!(
        stdout.contains(&format!("process {} (uid {uid}", child.0.id())),
        "{stdout}"
    );
    let selectors: Vec<&str> = stdout
        .split("selectors:\n")
        .nth(1)
        .expect("a selectors section")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    assert!(
        selectors.contains(&format!("unix:uid:{uid}").as_str()),
        "{stdout}"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", child.0.id())).unwrap();
    assert!(
        selectors.contains(&format!("unix:path:{}", exe.display()).as_str()),
        "{stdout}"
    );

    let api_line = stdout
        .lines()
        .position(|l| l.contains("spiffe://example.org/billing/api"))
        .expect("the matching entry is listed");
    let verdict = stdout.lines().nth(api_line + 1).unwrap();
    assert!(verdict.contains("MATCH"), "{stdout}");

    let db_line = stdout
        .lines()
        .position(|l| l.contains("spiffe://example.org/billing/db"))
        .expect("the non-matching entry is listed");
    let verdict = stdout.lines().nth(db_line + 1).unwrap();
    assert!(
        verdict.contains("no match") && verdict.contains("missing: unix:gid:4242"),
        "{stdout}"
    );
    assert!(
        stdout.contains("identities: spiffe://example.org/billing/api"),
        "{stdout}"
    );
}

#[test]
fn py_spiffe_fetches_and_watches_identities_from_the_agent() {
    let python = std::env::var_os(PYTHON_ENV).unwrap_or_else(|| {
        panic!(
            "{PYTHON_ENV} is not set: run scripts/setup.sh, then \
             {PYTHON_ENV}=$PWD/.cache/venv/bin/python cargo test -p mesh-e2e \
             (scripts/test.sh does both)"
        )
    });
    let id = "spiffe://example.org/billing/api";
    // Short-lived SVIDs, so that the script also sees a renewal on its stream.
    let agent = Agent::start(&format!(
        "svid_ttl = \"4s\"\n[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n",
        current_uid()
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/fetch.py");

    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(agent.socket()).stdin(Stdio::null());
    let out = output_within(cmd, EVENT_TIMEOUT);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        text(&out.stderr)
    );
    let field = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("fetch.py printed no `{name}`:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(field("x509_spiffe_id"), id);
    assert_eq!(field("x509_chain_length"), "1");
    assert_eq!(field("x509_bundle_trust_domains"), "example.org");
    assert_eq!(field("jwt_subject"), id);
    assert_eq!(field("jwt_audience"), "audit,billing");
    assert_eq!(field("jwt_validated_by_agent"), id);
    assert_eq!(field("jwt_validated_locally"), id);
    assert_eq!(field("jwt_wrong_audience"), "rejected");
    assert_eq!(field("x509_stream_renewed"), "yes");
}
