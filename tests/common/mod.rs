//! Helpers shared by the end-to-end tests: the real `dfp` binary, run from the repository root.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `dfp` with the repository root as working directory and no inherited log filter.
pub fn dfp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfp"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("DFP_LOG");
    cmd
}

/// Everything a run printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The folder holding the example plugins (next to `dfp`), built once per test binary with the same
/// profile: `cargo test` builds a cdylib crate's test harness, not its `.so`.
#[allow(dead_code)]
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_dfp")).parent().expect("binary folder").to_path_buf();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet"]);
        for p in ["dfp-plugin-okta", "dfp-plugin-geo-velocity", "dfp-plugin-testkit", "dfp-plugin-wrong-abi"] {
            cargo.args(["-p", p]);
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("cargo runs");
        assert!(out.status.success(), "building the example plugins failed:\n{}", text(&out));
        dir
    })
}

/// A free TCP port on the loopback interface.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// moto (an S3-compatible server, installed by `./dev setup`) on a free loopback port; killed when dropped.
#[allow(dead_code)]
pub struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto and waits until it listens; returns it with its port.
#[allow(dead_code)]
pub fn start_moto() -> (Moto, u16) {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start moto_server ({e}): install it with `pip install 'moto[server]'` (./dev setup does)")
        });
    let moto = Moto(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto_server did not listen on 127.0.0.1:{port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

/// An empty-bodied PUT (creates an S3 bucket on moto); panics unless the answer is 200.
#[allow(dead_code)]
pub fn http_put(port: u16, path: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "PUT {path}: {resp}");
}

/// `GET path` on a loopback port (HTTP/1.0, so no chunked answers): the status code and the body.
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Waits until `GET path` on `port` answers 200; panics naming `what` after `secs` seconds.
#[allow(dead_code)]
pub fn wait_http_ok(port: u16, path: &str, what: &str, secs: u64) -> String {
    let started = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(port, path) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what} did not answer 200 on 127.0.0.1:{port}{path} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Held by tests that start several busy processes, so that a test binary runs them one at a time on a
/// small machine (their timeouts stay meaningful).
#[allow(dead_code)]
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// An object-store client for `bucket` on the moto server at `port` (path-style, plain HTTP, moto's
/// test credentials).
#[allow(dead_code)]
pub fn moto_store(port: u16, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap()
}

/// Waits for `child` (stdout and stderr piped) at most `secs` seconds; a child still running then is
/// killed and the test fails with what it printed, instead of hanging.
#[allow(dead_code)]
pub fn finish_within(mut child: Child, secs: u64, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output of a killed child");
            panic!("{what} did not finish within {secs} s; it printed:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output of a finished child")
}

/// The Chromium binary: `DFP_CHROMIUM`, else `chromium` on PATH; fails the test when there is none.
#[allow(dead_code)]
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("DFP_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "headless Chromium is needed by this test but `chromium` is not on PATH: install Debian's chromium \
             (`apt-get install chromium`) or point DFP_CHROMIUM at a Chromium binary"
        )
    })
}

/// Certificates made with the openssl command in `dir`: a CA, a certificate for 127.0.0.1 signed by it
/// (with its key), and a second, unrelated CA with its own certificate for 127.0.0.1.
#[allow(dead_code)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca: PathBuf,
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

#[allow(dead_code)]
pub fn certificates(dir: &Path) -> Certs {
    let sh = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for (ca, leaf) in [("ca", "server"), ("other-ca", "other-server")] {
        let (ca_key, ca_pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=dfp test {ca}"));
        sh(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca_pem, "-days", "2",
            "-subj", &subj,
        ]);
        let (key, csr, pem) = (format!("{leaf}.key"), format!("{leaf}.csr"), format!("{leaf}.pem"));
        sh(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        sh(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
    }
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        other_ca: dir.join("other-ca.pem"),
        other_cert: dir.join("other-server.pem"),
        other_key: dir.join("other-server.key"),
    }
}
