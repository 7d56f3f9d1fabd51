//! A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries (`initdb`, `postgres`) on a
//! temporary folder and a free loopback port, one per test process, each test in a database of its own.
//!
//! A shell started beside it watches the test process and stops the server (and removes its folder) when
//! the tests end, however they end: Rust's test harness has no hook that runs after the last test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running server.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    next_db: AtomicUsize,
}

/// Where Debian keeps the server's programs (they are not on `PATH` there): the folder `initdb` on `PATH`
/// really lives in (a link to `initdb` alone does not bring `createdb` and `pg_isready`), else the newest
/// `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "postgres", "createdb", "pg_isready"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .find(|d| has_all(d))
    });
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                has_all(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// The test process's server, started on first use; `None` (after saying why) where PostgreSQL is not
/// installed, except under CI, which must have it (`.ci/run` installs Debian's `postgresql`).
pub fn postgres() -> Option<&'static Postgres> {
    static SERVER: OnceLock<Option<Postgres>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let Some(bin) = bin_dir() else {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI must provide PostgreSQL (.ci/run installs Debian's postgresql package)"
                );
                eprintln!(
                    "skipping the PostgreSQL runs: no initdb/postgres (apt-get install postgresql)"
                );
                return None;
            };
            Some(Postgres::start(bin))
        })
        .as_ref()
}

/// The server refuses to run as root; as root, its programs run as Debian's `postgres` user.
fn as_server_user(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Postgres {
    fn start(bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("sorrel-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot hand {} to the postgres user", dir.display());
        }
        let data = dir.join("data");
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "sorrel", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut server = as_server_user(&bin.join("postgres"));
        server.arg("-D").arg(&data).arg("-k").arg(&dir).args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=400",
        ]);
        let program = format!("{:?}", server.get_program());
        let args: Vec<String> = server
            .get_args()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        // Stops the server once the test process is gone (or the server died), then removes its folder.
        let watch = format!(
            "{} {} >{}/log 2>&1 & pg=$!\n\
             while kill -0 {parent} 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.5; done\n\
             kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
            shell_quote(program.trim_matches('"')),
            args.join(" "),
            shell_quote(&dir.to_string_lossy()),
            parent = std::process::id(),
            dir = shell_quote(&dir.to_string_lossy()),
        );
        // Not waited for on purpose: it outlives this process to stop the server after the last test.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watch])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let pg = Self {
            bin,
            port,
            next_db: AtomicUsize::new(0),
        };
        let t0 = Instant::now();
        while !pg.ready() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start in 30 s: {}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://sorrel@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn new_database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "sorrel",
            ])
            .arg(&name)
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
