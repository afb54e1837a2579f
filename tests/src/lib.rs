//! Support for NowConnect's end-to-end tests: a throwaway identity provider (EC keys, a JWKS
//! file, signed tokens), hub and agent processes with their JSON logs captured, loopback
//! targets, and blocking clients.
//!
//! Every process is killed on drop and every scratch directory removed. When a test panics,
//! the captured logs of its processes are printed, so a failure explains itself; set
//! `NC_TEST_VERBOSE=1` to print them for passing tests as well.
//!
//! The binaries are found in `NOWCONNECT_BIN_DIR` when it is set, otherwise next to the test
//! executable's `deps/` directory (`target/<profile>/`). Build them first:
//! `cargo build -p nowconnect-hub -p nowconnect-agent` (`scripts/test.sh` does).
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// How long a test waits for anything that should happen "soon": generous, because the
/// machine may be small and shared. Nothing is asserted against it except that it happens.
pub const WAIT: Duration = Duration::from_secs(15);

/// The audience every test hub checks, and the issuer it checks unless it trusts another
/// identity provider ([`HubConfig::issuer`]); the tokens of [`SigningKey`] carry both.
pub const AUDIENCE: &str = "nowconnect";
pub const ISSUER: &str = "https://idp.e2e.test/";

// ---------------------------------------------------------------------------------------------
// Scratch directories and binaries

/// A scratch directory, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "nc-e2e-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create scratch directory");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The path of a workspace binary (`nowconnect-hub`, `nowconnect-agent`); panics with how to
/// build it when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("NOWCONNECT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test binary>
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test binary has a directory");
            deps.parent().unwrap_or(deps).to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found. Build the binaries before running these tests: \
         `cargo build -p nowconnect-hub -p nowconnect-agent` with the same CARGO_TARGET_DIR and \
         profile as the tests (scripts/test.sh builds every binary first), or point \
         NOWCONNECT_BIN_DIR at the directory that holds them.",
        path.display()
    );
    path
}

/// A loopback address with a port that was free a moment ago (bound to port 0 and released).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Polls `check` every 50 ms until it returns true or `within` passes; returns whether it did.
pub fn poll_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Identity provider

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An EC P-256 key that signs agent tokens, with its key id.
pub struct SigningKey {
    pub kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn generate(kid: &str) -> SigningKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        // Uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        SigningKey {
            kid: kid.to_owned(),
            encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// A token for `agent_id` valid for an hour, with token id `jti`.
    pub fn token(&self, agent_id: &str, jti: &str) -> String {
        self.token_expiring(agent_id, jti, now_unix() + 3600)
    }

    /// A token for `agent_id` with token id `jti` that expires at `exp` (Unix seconds).
    pub fn token_expiring(&self, agent_id: &str, jti: &str, exp: u64) -> String {
        self.token_with(agent_id, jti, exp, serde_json::json!({}))
    }

    /// A token like [`SigningKey::token_expiring`] with the members of `extra` added to its
    /// claims (for instance a `cnf` binding).
    pub fn token_with(&self, agent_id: &str, jti: &str, exp: u64, extra: Value) -> String {
        let now = now_unix();
        let mut claims = serde_json::json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": agent_id,
            "agent_id": agent_id,
            "iat": now,
            "nbf": now.min(exp) - 5,
            "exp": exp,
            "jti": jti,
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// An agent's DPoP key (RFC 9449): its PKCS#8 PEM file, for `NC_DPOP_KEY_FILE`, and the
/// RFC 7638 thumbprint a token binds it with (`cnf.jkt`), computed here rather than by the
/// agent.
pub struct DpopKey {
    pub file: PathBuf,
    pub jkt: String,
}

impl DpopKey {
    /// A fresh P-256 key (ES256 proofs) written to `path`.
    pub fn p256(path: &Path) -> DpopKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..])
        );
        DpopKey::write(path, pair.to_pkcs8v1().unwrap().as_ref(), &canonical)
    }

    /// A fresh Ed25519 key (EdDSA proofs) written to `path`.
    pub fn ed25519(path: &Path) -> DpopKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        let canonical = format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
        );
        DpopKey::write(path, pair.to_pkcs8v1().unwrap().as_ref(), &canonical)
    }

    fn write(path: &Path, pkcs8: &[u8], canonical_jwk: &str) -> DpopKey {
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        std::fs::write(path, pem).unwrap();
        DpopKey {
            file: path.to_owned(),
            jkt: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical_jwk.as_bytes())),
        }
    }

    /// `NC_DPOP_KEY_FILE` pointing at this key.
    pub fn env(&self) -> (&'static str, &str) {
        ("NC_DPOP_KEY_FILE", self.file.to_str().unwrap())
    }
}

/// Writes a JWKS with the public halves of `keys`, atomically.
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    let set = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    write_atomically(path, set.to_string().as_bytes());
}

/// Replaces `path` with `contents` by writing a sibling file and renaming it, so a reader sees
/// the old or the new contents, never a mix.
pub fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Processes and their logs

#[derive(Default)]
struct LogBook {
    lines: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

/// A child process whose stderr (JSON log lines) is captured; killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    logs: Arc<LogBook>,
}

/// The `message` of a tracing JSON line, flattened (the hub) or under `fields` (the agent).
pub fn log_message(line: &Value) -> Option<&str> {
    line.get("message")
        .or_else(|| line.get("fields").and_then(|f| f.get("message")))
        .and_then(Value::as_str)
}

/// A field of a tracing JSON line, flattened or under `fields`.
pub fn log_field<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    line.get(key)
        .or_else(|| line.get("fields").and_then(|f| f.get(key)))
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(LogBook::default());
        let book = Arc::clone(&logs);
        let tag = name.to_owned();
        std::thread::spawn(move || {
            let verbose = std::env::var_os("NC_TEST_VERBOSE").is_some();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if verbose {
                    eprintln!("[{tag}] {line}");
                }
                book.lines.lock().unwrap().0.push(line);
                book.grew.notify_all();
            }
            book.lines.lock().unwrap().1 = true;
            book.grew.notify_all();
        });
        Proc {
            name: name.to_owned(),
            child,
            logs,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// How many log lines were captured so far (a cursor for [`Proc::wait_log`]).
    pub fn log_len(&self) -> usize {
        self.logs.lines.lock().unwrap().0.len()
    }

    /// The JSON log lines captured so far (lines that are not JSON are left out).
    pub fn log_lines(&self) -> Vec<Value> {
        let guard = self.logs.lines.lock().unwrap();
        guard
            .0
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every captured stderr line, JSON or not.
    pub fn text_lines(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().0.clone()
    }

    /// How many captured log lines have this message.
    pub fn count_log(&self, message: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| log_message(l) == Some(message))
            .count()
    }

    /// Waits for a JSON log line at or after line `from` that satisfies `pred`; returns its
    /// index and the line, or None when `within` passed or the process closed stderr.
    pub fn wait_log(
        &self,
        from: usize,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<(usize, Value)> {
        let deadline = Instant::now() + within;
        let mut next = from;
        let mut guard = self.logs.lines.lock().unwrap();
        loop {
            while next < guard.0.len() {
                let index = next;
                next += 1;
                if let Ok(v) = serde_json::from_str::<Value>(&guard.0[index])
                    && pred(&v)
                {
                    return Some((index, v));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if guard.1 || left.is_zero() {
                return None;
            }
            guard = self.logs.grew.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Sends `signal` (libc::SIGTERM, SIGSTOP, …) to the process, with kill(1).
    pub fn signal(&self, signal: i32) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        poll_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    fn dump_logs(&self) {
        let guard = self.logs.lines.lock().unwrap();
        eprintln!(
            "----- {} (pid {}): {} log lines -----",
            self.name,
            self.child.id(),
            guard.0.len()
        );
        // The tail is what explains a failure; a 200-stream test logs a lot.
        let skip = guard.0.len().saturating_sub(400);
        if skip > 0 {
            eprintln!("[{}] … {skip} earlier lines left out", self.name);
        }
        for line in &guard.0[skip..] {
            eprintln!("[{}] {line}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be able to die; SIGKILL works on it regardless.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// A command with a clean environment, so settings of the shell that runs the tests
/// (`NC_*`, `NOWCONNECT_*`, `RUST_LOG`) cannot leak into the processes under test.
fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    if let Some(bt) = std::env::var_os("RUST_BACKTRACE") {
        command.env("RUST_BACKTRACE", bt);
    }
    command
}

// ---------------------------------------------------------------------------------------------
// Hub

/// What a hub is started with; rendered into YAML.
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub replica: String,
    pub shards: u32,
    pub tunnel: SocketAddr,
    pub admin: SocketAddr,
    /// Connector name and listen address of each client listener, in order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub jwks: PathBuf,
    /// A `security.jwks_url` to use instead of `jwks` (a file), such as a real identity
    /// provider's `http://127.0.0.1:…/jwks`.
    pub jwks_url: Option<String>,
    /// `security.issuer`: [`ISSUER`] unless a test trusts another identity provider.
    pub issuer: String,
    /// The body of the `limits` mapping, such as `heartbeat_ms: 500`.
    pub limits: String,
    /// The certificate chain and key files (PEM) when the hub terminates TLS on its tunnel
    /// listener itself.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More keys of `tunnel.tls` (YAML flow-mapping entries), such as `client_auth: required`.
    pub tls_extra: String,
    /// More keys of `security` (YAML flow-mapping entries).
    pub security_extra: String,
    /// More top-level sections (YAML lines), such as a `pdp:` section.
    pub sections: String,
}

/// The I/O driver the hub runs with: `NOWCONNECT_TEST_DRIVER`, or `auto`.
pub fn test_driver() -> String {
    std::env::var("NOWCONNECT_TEST_DRIVER").unwrap_or_else(|_| "auto".to_owned())
}

impl HubConfig {
    /// One shard, ephemeral loopback ports for everything, one listener per connector.
    pub fn new(replica: &str, jwks: &Path, connectors: &[&str]) -> HubConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        HubConfig {
            replica: replica.to_owned(),
            shards: 1,
            tunnel: any,
            admin: any,
            listeners: connectors.iter().map(|c| ((*c).to_owned(), any)).collect(),
            jwks: jwks.to_owned(),
            jwks_url: None,
            issuer: ISSUER.to_owned(),
            limits: String::new(),
            tls: None,
            tls_extra: String::new(),
            security_extra: String::new(),
            sections: String::new(),
        }
    }

    pub fn yaml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("replica_id: {}\n", self.replica));
        out.push_str(&format!(
            "hub: {{ shards: {}, driver: {} }}\n",
            self.shards,
            test_driver()
        ));
        match &self.tls {
            None => out.push_str(&format!("tunnel: {{ listen: \"{}\" }}\n", self.tunnel)),
            Some((cert, key)) => out.push_str(&format!(
                "tunnel: {{ listen: \"{}\", tls: {{ cert_file: \"{}\", key_file: \"{}\"{}{} }} }}\n",
                self.tunnel,
                cert.display(),
                key.display(),
                if self.tls_extra.is_empty() { "" } else { ", " },
                self.tls_extra,
            )),
        }
        out.push_str(&format!("admin: {{ listen: \"{}\" }}\n", self.admin));
        out.push_str("listeners:\n");
        for (connector, listen) in &self.listeners {
            out.push_str(&format!(
                "  - {{ connector: {connector}, listen: \"{listen}\" }}\n"
            ));
        }
        let jwks_url = match &self.jwks_url {
            Some(url) => url.clone(),
            None => format!("file://{}", self.jwks.display()),
        };
        out.push_str(&format!(
            "security: {{ jwks_url: \"{jwks_url}\", audience: {AUDIENCE}, issuer: \"{}\"{}{} }}\n",
            self.issuer,
            if self.security_extra.is_empty() {
                ""
            } else {
                ", "
            },
            self.security_extra,
        ));
        out.push_str(&format!("limits: {{ {} }}\n", self.limits));
        out.push_str("logging: { format: json, level: debug }\n");
        out.push_str(&self.sections);
        out
    }
}

/// A running hub.
pub struct Hub {
    pub proc: Proc,
    pub config: HubConfig,
    pub tunnel: SocketAddr,
    pub admin: SocketAddr,
    pub listeners: Vec<SocketAddr>,
}

fn parse_addr_list(text: &str) -> Vec<SocketAddr> {
    // Debug of a Vec<SocketAddr>: "[127.0.0.1:1, 127.0.0.1:2]".
    text.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

impl Hub {
    /// Writes `config` into `dir` and starts a hub with it; returns once it logged
    /// `hub started` with its bound addresses.
    pub fn start(dir: &Path, config: &HubConfig) -> Hub {
        let file = dir.join(format!("{}.yaml", config.replica));
        std::fs::write(&file, config.yaml()).unwrap();
        let mut command = clean_command(&binary("nowconnect-hub"));
        command.arg("--config").arg(&file);
        let proc = Proc::spawn(&format!("hub {}", config.replica), command);
        let Some((_, line)) = proc.wait_log(0, WAIT, |l| log_message(l) == Some("hub started"))
        else {
            proc.dump_logs();
            panic!("hub {} did not log `hub started`", config.replica);
        };
        let addr = |key: &str| -> SocketAddr {
            log_field(&line, key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("`hub started` has no {key}: {line}"))
                .parse()
                .unwrap()
        };
        let listeners = parse_addr_list(
            log_field(&line, "listeners")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        assert_eq!(listeners.len(), config.listeners.len(), "{line}");
        Hub {
            tunnel: addr("tunnel"),
            admin: addr("admin"),
            listeners,
            config: config.clone(),
            proc,
        }
    }

    /// This hub's configuration with the ports it actually bound, for a restart on the same
    /// addresses.
    pub fn pinned_config(&self) -> HubConfig {
        let mut config = self.config.clone();
        config.tunnel = self.tunnel;
        config.admin = self.admin;
        for (slot, addr) in config.listeners.iter_mut().zip(&self.listeners) {
            slot.1 = *addr;
        }
        config
    }

    /// Waits until `/readyz` answers 200 (listeners bound, JWKS loaded, not draining).
    pub fn wait_ready(&self) {
        let ok = poll_until(WAIT, || self.admin_get("/readyz").0 == 200);
        assert!(
            ok,
            "hub {} never became ready: {:?}",
            self.config.replica,
            self.admin_get("/readyz")
        );
    }

    /// How many agent sessions the hub has logged as ended.
    pub fn count_session_ends(&self) -> usize {
        self.proc.count_log("agent session ended")
    }

    /// Kills the hub with SIGKILL and waits until its listening sockets are really closed:
    /// connecting to its tunnel and client ports is refused. Reaping the process is not
    /// enough: with io_uring the kernel may tear the ring (and the sockets it holds) down a
    /// little later, and until then an `SO_REUSEPORT` successor on the same port shares new
    /// connections with the dying socket, which resets them.
    pub fn kill_and_wait_closed(&mut self) {
        self.proc.kill();
        let mut ports = self.listeners.clone();
        ports.push(self.tunnel);
        let closed = poll_until(WAIT, || {
            ports.iter().all(|addr| {
                matches!(
                    TcpStream::connect(addr),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
                )
            })
        });
        assert!(closed, "the killed hub's ports still accept connections");
    }

    /// The client listener of `connector`.
    pub fn listener(&self, connector: &str) -> SocketAddr {
        let index = self
            .config
            .listeners
            .iter()
            .position(|(c, _)| c == connector)
            .unwrap_or_else(|| panic!("no listener for {connector}"));
        self.listeners[index]
    }

    /// The agent-facing URL.
    pub fn url(&self) -> String {
        format!("ws://{}/nowconnect/v1/tunnel", self.tunnel)
    }

    /// The agent-facing `wss://` URL naming the hub as `host` (for a hub with `tls`).
    pub fn tls_url(&self, host: &str) -> String {
        format!("wss://{host}:{}/nowconnect/v1/tunnel", self.tunnel.port())
    }

    /// GETs an admin path: status and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The value of the `/metrics` sample whose name and labels are exactly `sample`, such as
    /// `nowconnect_sessions{agent="a1"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (status, body) = self.admin_get("/metrics");
        if status != 200 {
            return None;
        }
        metric_in(&body, sample)
    }

    /// Waits until the hub counts `n` sessions of `agent` (an agent without sessions has no
    /// series at all).
    pub fn wait_sessions(&self, agent: &str, n: usize) {
        let sample = format!("nowconnect_sessions{{agent=\"{agent}\"}}");
        let ok = poll_until(WAIT, || {
            let (status, body) = self.admin_get("/metrics");
            status == 200 && metric_in(&body, &sample).unwrap_or(0.0) == n as f64
        });
        assert!(
            ok,
            "hub {} never counted {n} sessions of {agent} (now {:?})",
            self.config.replica,
            self.metric(&sample)
        );
    }
}

/// The value of the sample `sample` in a Prometheus/OpenMetrics text body.
pub fn metric_in(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == sample).then(|| value.parse().ok()).flatten()
    })
}

/// A blocking HTTP/1.1 GET with `Connection: close`: status and body. Status 0 when nothing
/// answered.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Agent

/// What an agent is started with; passed as `NC_*` variables.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    pub hub_urls: Vec<String>,
    pub token_file: PathBuf,
    /// Connector name and target of each connector.
    pub connectors: Vec<(String, SocketAddr)>,
    /// Sessions per hub; None for `auto` (one per hub shard).
    pub lanes: Option<u32>,
    pub health: SocketAddr,
}

/// A running agent.
pub struct Agent {
    pub proc: Proc,
    pub config: AgentConfig,
}

impl Agent {
    pub fn start(config: &AgentConfig) -> Agent {
        Agent::start_with_env(config, &[])
    }

    /// [`Agent::start`] with further environment variables, such as `NC_TRUST_ENV` and
    /// `HTTPS_PROXY`.
    pub fn start_with_env(config: &AgentConfig, env: &[(&str, &str)]) -> Agent {
        let connectors = config
            .connectors
            .iter()
            .map(|(name, target)| format!("{name}={target}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = clean_command(&binary("nowconnect-agent"));
        command
            .env("NC_HUB_URL", config.hub_urls.join(","))
            .env("NC_AGENT_ID", &config.agent_id)
            .env("NC_TOKEN_FILE", &config.token_file)
            .env("NC_CONNECTORS", connectors)
            .env(
                "NC_LANES",
                config.lanes.map_or("auto".to_owned(), |n| n.to_string()),
            )
            .env("NC_HEALTH_ADDR", config.health.to_string())
            .env("NC_LOG_FORMAT", "json")
            .env("NC_LOG_LEVEL", "debug")
            .env("NC_DIAL_TIMEOUT_MS", "5000");
        command.envs(env.iter().copied());
        Agent {
            proc: Proc::spawn(&format!("agent {}", config.agent_id), command),
            config: config.clone(),
        }
    }

    /// Waits until the agent's `/readyz` answers 200 (a session to every hub).
    pub fn wait_ready(&self) {
        let ok = poll_until(WAIT, || http_get(self.config.health, "/readyz").0 == 200);
        assert!(ok, "agent never became ready");
    }

    /// How many sessions the agent has logged as established.
    pub fn sessions_established(&self) -> usize {
        self.proc.count_log("session established")
    }

    /// The agent's `session established` log lines so far.
    pub fn established_lines(&self) -> Vec<Value> {
        self.proc
            .log_lines()
            .into_iter()
            .filter(|l| log_message(l) == Some("session established"))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Programs from the system (proxies, servers, clients)

/// The path of a system program the tests run (`tinyproxy`, `redis-server`, `nginx`, …),
/// looked up in `PATH` and the sbin directories; panics with how to install it when missing.
pub fn system_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed. These tests run it as a real peer; run scripts/test.sh, \
         which installs it (Debian: apt-get install with the packages listed in its need_apt)."
    );
}

/// A file of the Node packages in `tests/node` (`rel` below its `node_modules`); panics with
/// how to install them when missing.
pub fn node_package_file(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node/node_modules")
        .join(rel);
    assert!(
        path.exists(),
        "{} is missing. These tests run real services from npm packages; run scripts/test.sh, \
         which installs them (npm ci in tests/node).",
        path.display()
    );
    path
}

/// A system program running with `args` and a clean environment plus `env`; its stderr is
/// captured (see [`Proc::text_lines`]) and it is killed on drop.
pub fn spawn_program(name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut command = clean_command(program);
    command
        .args(args)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .envs(env.iter().copied());
    Proc::spawn(name, command)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let up = poll_until(WAIT, || TcpStream::connect(addr).is_ok());
    assert!(up, "{what} never listened on {addr}");
}

/// Runs a program to completion with a clean environment; returns its exit status, stdout
/// and stderr.
pub fn run_program(program: &Path, args: &[&str]) -> (ExitStatus, Vec<u8>, String) {
    let out = clean_command(program)
        .args(args)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        out.status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_program`] for a client that talks to a peer: stdin is read from `stdin` (empty when
/// None), and a client still running after `within` is killed and reported as a panic, so a
/// stuck peer fails the test instead of hanging it.
pub fn run_program_within(
    program: &Path,
    args: &[&str],
    stdin: Option<&Path>,
    within: Duration,
) -> (ExitStatus, Vec<u8>, String) {
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())),
        ),
        None => Stdio::null(),
    };
    let mut child = clean_command(program)
        .args(args)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut status = None;
    poll_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let err = err.join().unwrap_or_default();
        panic!(
            "{} {args:?} did not finish within {within:?}; stderr: {}",
            program.display(),
            String::from_utf8_lossy(&err)
        );
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    (status, out, String::from_utf8_lossy(&err).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Targets

/// A loopback listener with a roomy backlog, so a burst of agent dials is never dropped.
pub fn listen_loopback() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(1024).unwrap();
    socket.into()
}

/// A target that runs `handler` on its own thread for every accepted connection. The
/// listener lives until the test process ends.
pub fn spawn_target(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = listen_loopback();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
            let handler = Arc::clone(&handler);
            let _ = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || handler(conn));
        }
    });
    addr
}

/// An echo target: every byte comes back, and EOF is answered with EOF.
pub fn echo_target() -> SocketAddr {
    spawn_target(|mut conn| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    let _ = conn.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

/// An address where nothing listens: connecting is refused.
pub fn closed_port() -> SocketAddr {
    free_addr()
}

/// Closes `conn` with a TCP reset (`SO_LINGER` 0).
pub fn reset(conn: TcpStream) {
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(conn);
}

// ---------------------------------------------------------------------------------------------
// Clients and payloads

/// `len` pseudo-random bytes from `seed` (xorshift64*), different for every seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A certificate authority for tests, its certificate written to `ca.pem` in a directory.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA's certificate, PEM: the bundle a hub or an agent is told to trust.
    pub file: PathBuf,
}

impl TestCa {
    /// A new CA named `common_name`, written to `ca.pem` in `dir`.
    pub fn new(dir: &TempDir, common_name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, issuer.pem()).unwrap();
        TestCa { issuer, file }
    }

    /// A server certificate for `hosts` (names or IP addresses) that this CA signed, written
    /// as `<name>.crt` and `<name>.key` in `dir`.
    pub fn server(&self, dir: &TempDir, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let params = rcgen::CertificateParams::new(hosts).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write_cert_pair(dir, name, &cert.pem(), &key.serialize_pem())
    }
}

/// An agent's client certificate named `name`, signed by `ca` or else self-signed, written as
/// `<name>.crt` and `<name>.key` in `dir`; returns the two files and the certificate's DER.
pub fn client_cert(dir: &TempDir, name: &str, ca: Option<&TestCa>) -> (PathBuf, PathBuf, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let (cert_file, key_file) = write_cert_pair(dir, name, &cert.pem(), &key.serialize_pem());
    (cert_file, key_file, cert.der().to_vec())
}

fn write_cert_pair(dir: &TempDir, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (cert_file, key_file) = (
        dir.join(&format!("{name}.crt")),
        dir.join(&format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (cert_file, key_file)
}

/// The RFC 8705 thumbprint of a DER certificate (`cnf.x5t#S256`): base64url SHA-256.
pub fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects a client with read and write timeouts of [`WAIT`].
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `data` on a new connection to `addr` and half-closes, while reading everything that
/// comes back until EOF. Writing and reading run at once, so an echo of any size cannot
/// deadlock on full buffers.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    exchange_on(s, data)
}

/// [`exchange`] on a connection the caller opened.
pub fn exchange_on(s: TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut writer = s.try_clone()?;
    let mut reader = s;
    std::thread::scope(|scope| {
        let sent = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn_scoped(scope, move || -> io::Result<()> {
                for chunk in data.chunks(16 * 1024) {
                    writer.write_all(chunk)?;
                }
                writer.shutdown(Shutdown::Write)
            })
            .expect("spawn writer");
        let mut back = Vec::with_capacity(data.len());
        let read = reader.read_to_end(&mut back);
        if read.is_err() {
            // Unblock a writer stuck on a full buffer.
            let _ = reader.shutdown(Shutdown::Both);
        }
        let sent = sent.join().expect("writer panicked");
        read?;
        sent?;
        Ok(back)
    })
}

/// How a read to the end finished.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// An orderly EOF.
    Eof,
    /// ECONNRESET: the peer reset the connection.
    Reset,
    /// Nothing within the read timeout.
    TimedOut,
    /// Any other error.
    Other(io::ErrorKind),
}

/// Reads until EOF, a reset or the timeout; returns the bytes and how it ended.
pub fn read_to_end_with(s: &mut TcpStream, within: Duration) -> (Vec<u8>, End) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                let end = match e.kind() {
                    io::ErrorKind::ConnectionReset => End::Reset,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::TimedOut,
                    kind => End::Other(kind),
                };
                return (out, end);
            }
        }
    }
}

/// Repeats `attempt` until it succeeds or `within` passes; returns the last error on failure.
pub fn retry<T>(within: Duration, mut attempt: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// An echo round trip of `data` through `addr`; an error when the bytes differ, so that it
/// can be retried while a route comes up.
pub fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> io::Result<()> {
    let back = exchange(addr, data)?;
    if sha256(&back) != sha256(data) {
        return Err(io::Error::other(format!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            back.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A standard rig: one hub, one agent, some targets

/// The agent id of a rig's agent.
pub const AGENT_ID: &str = "agent-e2e";

/// One hub and one agent serving `targets`, with the keys and files they use. Dropped in
/// declaration order: processes first, then the scratch directory.
pub struct Rig {
    pub agent: Agent,
    pub hub: Hub,
    pub key: SigningKey,
    pub jwks: PathBuf,
    pub token_file: PathBuf,
    pub dir: TempDir,
}

impl Rig {
    /// Starts a hub with a listener per connector and `limits`, then an agent connecting each
    /// connector to its target, and waits until the hub routes to the agent.
    pub fn start(tag: &str, targets: &[(&str, SocketAddr)], limits: &str) -> Rig {
        Rig::start_sharded(tag, targets, limits, 1)
    }

    /// [`Rig::start`] with a hub of `shards` shards and an agent with one lane per shard.
    pub fn start_sharded(
        tag: &str,
        targets: &[(&str, SocketAddr)],
        limits: &str,
        shards: u32,
    ) -> Rig {
        let names: Vec<&str> = targets.iter().map(|(n, _)| *n).collect();
        let Site {
            hub,
            key,
            token_file,
            dir,
        } = Site::start_with(tag, &names, |config, _| {
            config.limits = limits.to_owned();
            config.shards = shards;
        });
        let jwks = dir.join(SITE_JWKS);
        let agent = Agent::start(&AgentConfig {
            agent_id: AGENT_ID.to_owned(),
            hub_urls: vec![hub.url()],
            token_file: token_file.clone(),
            connectors: targets.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect(),
            lanes: Some(shards),
            health: free_addr(),
        });
        hub.wait_sessions(AGENT_ID, shards as usize);
        agent.wait_ready();
        Rig {
            agent,
            hub,
            key,
            jwks,
            token_file,
            dir,
        }
    }

    /// The hub's listener for `connector`.
    pub fn listener(&self, connector: &str) -> SocketAddr {
        self.hub.listener(connector)
    }
}

// ---------------------------------------------------------------------------------------------
// A hub with its identity provider, for tests that start their agents themselves

/// The name of a [`Site`]'s JWKS file in its directory.
const SITE_JWKS: &str = "jwks.json";

/// A hub, the key its JWKS trusts and a token file for [`AGENT_ID`]; agents are started by
/// the test (with [`Site::agent`]) and must be dropped before the site.
pub struct Site {
    pub hub: Hub,
    pub key: SigningKey,
    pub token_file: PathBuf,
    pub dir: TempDir,
}

impl Site {
    /// A one-shard hub with a listener per connector.
    pub fn start(tag: &str, connectors: &[&str]) -> Site {
        Site::start_with(tag, connectors, |_, _| {})
    }

    /// [`Site::start`] with the hub's configuration adjusted by `edit` (given the scratch
    /// directory, for files such as certificates).
    pub fn start_with(
        tag: &str,
        connectors: &[&str],
        edit: impl FnOnce(&mut HubConfig, &TempDir),
    ) -> Site {
        let dir = TempDir::new(tag);
        let key = SigningKey::generate("k1");
        let jwks = dir.join(SITE_JWKS);
        write_jwks(&jwks, &[&key]);
        let token_file = dir.join("token");
        write_atomically(&token_file, key.token(AGENT_ID, "jti-1").as_bytes());
        let mut config = HubConfig::new("hub-a", &jwks, connectors);
        edit(&mut config, &dir);
        let hub = Hub::start(dir.path(), &config);
        Site {
            hub,
            key,
            token_file,
            dir,
        }
    }

    /// Starts an agent with one lane to `hub_url` serving `targets`, with `env` added.
    pub fn agent(
        &self,
        hub_url: &str,
        targets: &[(&str, SocketAddr)],
        env: &[(&str, &str)],
    ) -> Agent {
        Agent::start_with_env(
            &AgentConfig {
                agent_id: AGENT_ID.to_owned(),
                hub_urls: vec![hub_url.to_owned()],
                token_file: self.token_file.clone(),
                connectors: targets.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect(),
                lanes: Some(1),
                health: free_addr(),
            },
            env,
        )
    }
}
