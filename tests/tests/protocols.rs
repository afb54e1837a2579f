//! Real protocol peers through the tunnel, unchanged: `redis-cli` against `redis-server` and
//! `curl` against `nginx`, each client pointed at the hub's listener and each server behind
//! the agent. One hub with a `redis` and an `http` listener, one agent with both connectors.
//!
//! The programs are installed by scripts/test.sh (redis-server, redis-tools, nginx-light,
//! curl); without them this test fails and says so.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nowconnect_tests::*;

/// How long one client run may take before it is killed and the test fails.
const CLIENT_WAIT: Duration = Duration::from_secs(60);

/// A `redis-server` on a loopback port, with no persistence and its files in a scratch
/// directory; killed on drop.
struct Redis {
    proc: Proc,
    addr: SocketAddr,
    dir: TempDir,
}

impl Redis {
    fn start() -> Redis {
        let program = system_program("redis-server");
        let dir = TempDir::new("redis");
        let addr = free_addr();
        let port = addr.port().to_string();
        let log = dir.join("redis.log");
        let proc = spawn_program(
            "redis-server",
            &program,
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                dir.path().to_str().unwrap(),
                "--logfile",
                log.to_str().unwrap(),
            ],
            &[],
        );
        wait_listening(addr, "redis-server");
        Redis { proc, addr, dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- redis-server log -----");
            eprintln!(
                "{}",
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
        }
        self.proc.kill();
    }
}

/// An `nginx` serving a scratch directory on a loopback port, everything it writes kept in
/// that directory; stopped on drop.
struct Nginx {
    proc: Proc,
    addr: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `files` (name, contents) in its document root.
    fn start(files: &[(&str, &[u8])]) -> Nginx {
        let program = system_program("nginx");
        let dir = TempDir::new("nginx");
        let root = dir.join("www");
        std::fs::create_dir(&root).unwrap();
        for (name, contents) in files {
            let path = root.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // Run as root, nginx's worker drops to an unprivileged user that must read the root.
        for path in [dir.path(), root.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let addr = free_addr();
        let p = |name: &str| dir.join(name).display().to_string();
        let conf = format!(
            "worker_processes 1;\n\
             pid \"{pid}\";\n\
             error_log \"{error_log}\" info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   default_type application/octet-stream;\n\
             \x20   client_body_temp_path \"{body}\";\n\
             \x20   proxy_temp_path \"{proxy}\";\n\
             \x20   fastcgi_temp_path \"{fastcgi}\";\n\
             \x20   uwsgi_temp_path \"{uwsgi}\";\n\
             \x20   scgi_temp_path \"{scgi}\";\n\
             \x20   server {{\n\
             \x20       listen {addr};\n\
             \x20       root \"{root}\";\n\
             \x20   }}\n\
             }}\n",
            pid = p("nginx.pid"),
            error_log = p("error.log"),
            body = p("body"),
            proxy = p("proxy"),
            fastcgi = p("fastcgi"),
            uwsgi = p("uwsgi"),
            scgi = p("scgi"),
            root = root.display(),
        );
        let conf_file = dir.join("nginx.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let prefix = format!("{}/", dir.path().display());
        let proc = spawn_program(
            "nginx",
            &program,
            &[
                "-e",
                "stderr",
                "-c",
                conf_file.to_str().unwrap(),
                "-p",
                &prefix,
                "-g",
                "daemon off;",
            ],
            &[],
        );
        let nginx = Nginx { proc, addr, dir };
        wait_listening(addr, "nginx");
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- nginx error log -----");
            eprintln!(
                "{}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
        }
        // SIGKILL would orphan the worker; SIGTERM makes the master stop it and wait for it.
        if self.proc.wait_exit(Duration::ZERO).is_none() {
            self.proc.signal(libc::SIGTERM);
            if self.proc.wait_exit(WAIT).is_none() {
                self.proc.kill();
            }
        }
    }
}

/// Runs `redis-cli` against `addr` with `args` (and stdin from `stdin`): exit status, stdout
/// and stderr.
fn run_redis_cli(
    addr: SocketAddr,
    args: &[&str],
    stdin: Option<&Path>,
) -> (std::process::ExitStatus, Vec<u8>, String) {
    let program = system_program("redis-cli");
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let mut all = vec!["-h", host.as_str(), "-p", port.as_str()];
    all.extend_from_slice(args);
    run_program_within(&program, &all, stdin, CLIENT_WAIT)
}

/// [`run_redis_cli`] that must succeed; its stdout.
fn redis_cli(addr: SocketAddr, args: &[&str], stdin: Option<&Path>) -> Vec<u8> {
    let (status, out, err) = run_redis_cli(addr, args, stdin);
    assert!(
        status.success(),
        "redis-cli {args:?} failed ({status}): {err} {}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// `bytes` without one trailing newline (how redis-cli ends every reply it prints).
fn reply(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\n").unwrap_or(bytes)
}

#[test]
fn redis_and_nginx_talk_through_the_tunnel_unchanged() {
    // Check for every program first, so a missing one is reported before anything starts.
    for program in ["redis-server", "redis-cli", "nginx", "curl"] {
        system_program(program);
    }

    let page = payload(31, 2 << 20);
    let redis = Redis::start();
    let nginx = Nginx::start(&[("big.bin", &page)]);
    let rig = Rig::start(
        "protocols",
        &[("redis", redis.addr), ("http", nginx.addr)],
        "",
    );
    let redis_at = rig.listener("redis");
    let http_at = rig.listener("http");

    // Redis: the route is up once a PING through the hub is answered.
    let up = poll_until(WAIT, || {
        let (status, out, _) = run_redis_cli(redis_at, &["PING"], None);
        status.success() && reply(&out) == b"PONG"
    });
    assert!(up, "redis-server never answered PING through the tunnel");

    let value = format!("through-the-tunnel-{}", std::process::id());
    assert_eq!(
        reply(&redis_cli(redis_at, &["SET", "k", &value], None)),
        b"OK"
    );
    assert_eq!(
        reply(&redis_cli(redis_at, &["GET", "k"], None)),
        value.as_bytes()
    );

    // A 1 MiB value, sent as the last argument from stdin (`-x`) and read back raw.
    let big = payload(32, 1 << 20);
    let scratch = TempDir::new("protocols-data");
    let big_file = scratch.join("big.bin");
    std::fs::write(&big_file, &big).unwrap();
    assert_eq!(
        reply(&redis_cli(redis_at, &["-x", "SET", "big"], Some(&big_file))),
        b"OK"
    );
    assert_eq!(
        reply(&redis_cli(redis_at, &["STRLEN", "big"], None)),
        big.len().to_string().as_bytes()
    );
    let back = redis_cli(redis_at, &["GET", "big"], None);
    let back = reply(&back);
    assert_eq!(back.len(), big.len(), "size of the value GET returned");
    assert_eq!(
        sha256(back),
        sha256(&big),
        "checksum of the value GET returned"
    );

    // HTTP: curl fetches the 2 MiB file from nginx through the hub.
    let curl = system_program("curl");
    let url = format!("http://{http_at}/big.bin");
    let fetched = scratch.join("fetched.bin");
    let (status, out, err) = run_program_within(
        &curl,
        &[
            "--silent",
            "--show-error",
            "--http1.1",
            "--max-time",
            "60",
            "--retry",
            "3",
            "--retry-connrefused",
            "--output",
            fetched.to_str().unwrap(),
            "--write-out",
            "%{http_code}",
            &url,
        ],
        None,
        CLIENT_WAIT + Duration::from_secs(30),
    );
    assert!(status.success(), "curl {url} failed ({status}): {err}");
    assert_eq!(String::from_utf8_lossy(&out), "200", "HTTP status; {err}");
    let body = std::fs::read(&fetched).unwrap();
    assert_eq!(body.len(), page.len(), "size of the fetched file");
    assert_eq!(sha256(&body), sha256(&page), "checksum of the fetched file");
}
