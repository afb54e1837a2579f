//! The command line: `--check` on the shipped example and on broken files.

mod support;

use std::process::Command;

use support::{TempDir, hub_binary};

fn check(path: &std::path::Path) -> (bool, i32, String) {
    let out = Command::new(hub_binary())
        .args(["--check", "--config"])
        .arg(path)
        .env_remove("NOWCONNECT_JWKS_URL")
        .env_remove("NOWCONNECT_AUDIENCE")
        .output()
        .unwrap();
    (
        out.status.success(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cloud_example_passes_check() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cloud.yaml");
    let (ok, _, stderr) = check(&example);
    assert!(ok, "config/cloud.yaml rejected: {stderr}");
}

#[test]
fn a_bad_value_fails_with_one_line_naming_the_key() {
    let dir = TempDir::new("cli");
    let path = dir.path("hub.yaml");
    std::fs::write(
        &path,
        "security: { jwks_url: https://idp.test/jwks, audience: nc }\nlimits: { heartbeat_ms: 5 }\n",
    )
    .unwrap();
    let (ok, code, stderr) = check(&path);
    assert!(!ok);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("limits.heartbeat_ms"), "{stderr}");
    assert!(stderr.contains("`5`"), "{stderr}");
}

#[test]
fn a_missing_file_is_named() {
    let (ok, code, stderr) = check(std::path::Path::new("/nonexistent/hub.yaml"));
    assert!(!ok);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/hub.yaml"), "{stderr}");
}

#[test]
fn a_pdp_section_is_checked_like_any_other() {
    let dir = TempDir::new("cli");
    let path = dir.path("hub.yaml");
    let base = "security: { jwks_url: https://idp.test/jwks, audience: nc }";
    std::fs::write(
        &path,
        format!("{base}\npdp: {{ url: \"http://127.0.0.1:8594\", dialect: legacy }}\n"),
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(ok, "{stderr}");
    std::fs::write(
        &path,
        format!("{base}\npdp: {{ url: \"http://127.0.0.1:8594\", dialect: xacml }}\n"),
    )
    .unwrap();
    let (ok, code, stderr) = check(&path);
    assert!(!ok);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pdp.dialect"), "{stderr}");
}

#[test]
fn dpop_required_is_accepted() {
    let dir = TempDir::new("cli");
    let path = dir.path("hub.yaml");
    std::fs::write(
        &path,
        "security: { jwks_url: https://idp.test/jwks, audience: nc, dpop: { required: true } }\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(ok, "security.dpop.required refused: {stderr}");
}
