//! A private PostgreSQL server for tests.
//!
//! [`PgServer::start`] runs Debian's (or the `PATH`'s) `initdb` and
//! `pg_ctl` on a temporary data directory and a free loopback port — never
//! a system service. PostgreSQL refuses to run as root, so when the tests
//! run as root (CI does) the server runs as the `postgres` user (made by
//! Debian's package) or `nobody`, through `runuser`. A watchdog process
//! stops the server when the test process exits however it exits, so a
//! server shared by a whole test binary (a `static`) is not left behind.
//!
//! Each test takes its own database with [`PgServer::database`].
//! `BATON_PG_OPTIONS` adds server options (`-c name=value ...`) to every
//! server started, for profiling runs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A running server; stopped when dropped (or when the process exits).
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Who the server runs as, when not the current user.
    user: Option<String>,
    /// Whether it speaks TLS (with a certificate of its own for 127.0.0.1).
    tls: bool,
}

/// What went wrong starting or using the server.
pub type Error = String;

static DATABASES: AtomicU64 = AtomicU64::new(0);

fn bin_dir() -> Result<PathBuf, Error> {
    if let Ok(dir) = std::env::var("BATON_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    // Debian: /usr/lib/postgresql/<major>/bin; the newest wins.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )),
        _ => Err(
            "no PostgreSQL server binaries: install Debian's `postgresql` package \
                  (or set BATON_PG_BIN to the directory holding initdb and pg_ctl)"
                .into(),
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn uid_gid(user: &str) -> Result<(u32, u32), Error> {
    let id = |flag: &str| -> Result<u32, Error> {
        let o = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| format!("id {flag} {user}: {e}"))?;
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no user {user}"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl PgServer {
    /// Start a new server (a few seconds: initdb, then start).
    pub fn start() -> Result<PgServer, Error> {
        Self::start_inner(false)
    }

    /// Start a server that speaks TLS too, with a self-signed certificate
    /// for `127.0.0.1` ([`Self::certificate`]), made with `openssl`.
    pub fn start_with_tls() -> Result<PgServer, Error> {
        Self::start_inner(true)
    }

    /// The server's certificate (PEM), which is its own CA.
    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    fn start_inner(tls: bool) -> Result<PgServer, Error> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("baton-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let user = if is_root() {
            let user = ["postgres", "nobody"]
                .into_iter()
                .find(|u| uid_gid(u).is_ok())
                .ok_or("running as root and no unprivileged user (postgres, nobody)")?;
            let (uid, gid) = uid_gid(user)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
            Some(user.to_string())
        } else {
            None
        };
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            user,
            tls,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "baton",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if tls {
            server.make_certificate()?;
        }
        server.port = free_port()?;
        server.pg_ctl_start()?;
        server.watchdog()?;
        Ok(server)
    }

    /// The server's data directory (its files, for raw searches).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run one of the server's programs as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), Error> {
        let exe = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A self-signed certificate and key for 127.0.0.1, readable by the
    /// server's user only.
    fn make_certificate(&self) -> Result<(), Error> {
        let key = self.dir.path().join("server.key");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(self.certificate())
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        if let Some(u) = &self.user {
            let (uid, gid) = uid_gid(u)?;
            for f in [&key, &self.certificate()] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let data = self.data_dir();
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             -c max_connections=200 -c fsync=on",
            self.port,
            path_str(self.dir.path())?
        );
        if self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                path_str(&self.certificate())?,
                path_str(&self.dir.path().join("server.key"))?
            ));
        }
        // Extra settings for a profiling run, e.g. `-c
        // shared_preload_libraries=pg_stat_statements`.
        if let Ok(extra) = std::env::var("BATON_PG_OPTIONS") {
            opts.push(' ');
            opts.push_str(&extra);
        }
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &opts,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// A process that stops the server once this process is gone, and
    /// removes its directory.
    fn watchdog(&self) -> Result<(), Error> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = self.stop_command()?,
            dir = path_str(self.dir.path())?
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        Ok(())
    }

    fn stop_command(&self) -> Result<String, Error> {
        let pg_ctl = self.bin.join("pg_ctl");
        let base = format!(
            "'{}' -D '{}' -m immediate stop",
            path_str(&pg_ctl)?,
            path_str(&self.data_dir())?
        );
        Ok(match &self.user {
            Some(u) => format!("runuser -u {u} -- {base}"),
            None => base,
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://baton@127.0.0.1:{}/{db}?connect_timeout=5",
            self.port
        )
    }

    /// A new, empty database of its own for one test: its URL.
    pub fn database(&self) -> Result<String, Error> {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// The database a URL of [`Self::database`] names.
    pub fn database_name(url: &str) -> String {
        url.rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .unwrap_or_default()
            .to_string()
    }

    /// Run SQL on the `postgres` database with `psql`.
    pub fn psql(&self, sql: &str) -> Result<String, Error> {
        self.psql_in("postgres", sql)
    }

    /// Run `sql` in database `db`; its output, rows unaligned.
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String, Error> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", &self.url(db), "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stop the server (fast: open transactions are rolled back).
    pub fn stop(&self) -> Result<(), Error> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir())?,
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    /// Start it again after [`Self::stop`], on the same port.
    pub fn restart(&self) -> Result<(), Error> {
        self.pg_ctl_start()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn path_str(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| format!("not UTF-8: {}", p.display()))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(cmd) = self.stop_command() {
            let _ = Command::new("sh")
                .args(["-c", &cmd])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The variable that puts test stores on PostgreSQL: `BATON_TEST_STORE=postgres`
/// runs a suite written against a data dir on a private PostgreSQL server
/// instead (one suite, two backends).
pub const STORE_VAR: &str = "BATON_TEST_STORE";

/// Whether this test run puts its stores on PostgreSQL ([`STORE_VAR`]).
pub fn on_postgres() -> bool {
    std::env::var(STORE_VAR).is_ok_and(|v| v == "postgres")
}

/// The server this test process shares, started on first use.
pub fn shared() -> Result<&'static PgServer, Error> {
    static SERVER: std::sync::OnceLock<Result<PgServer, Error>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(PgServer::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// With [`on_postgres`], the URL of the database that stands for the data
/// dir `data_dir`: made on the shared server the first time the dir is
/// named, the same database each later time (a restart in a test reopens
/// what it wrote). `None` when stores stay on RocksDB.
pub fn database_for(data_dir: &Path) -> Option<Result<String, Error>> {
    if !on_postgres() {
        return None;
    }
    static DATABASES_BY_DIR: std::sync::Mutex<Vec<(PathBuf, String)>> =
        std::sync::Mutex::new(Vec::new());
    let mut known = DATABASES_BY_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, url)) = known.iter().find(|(d, _)| d == data_dir) {
        return Some(Ok(url.clone()));
    }
    let url = match shared().and_then(PgServer::database) {
        Ok(u) => u,
        Err(e) => return Some(Err(e)),
    };
    known.push((data_dir.to_path_buf(), url.clone()));
    Some(Ok(url))
}
