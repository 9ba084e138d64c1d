//! A real FraiseQL 2.19 server as the GraphQL origin, on PostgreSQL 18, authenticating every request
//! with a JWT it verifies against a JWKS URL: the schema and data in `tests/fraiseql/`, the programs
//! from `scripts/fraiseql.sh` (installed once per test process). Everything lives in one temp folder
//! per server: `postgres.log`, `fraiseql.log`, `server.toml`, the compiled schema and `pg/` (the data).
//!
//! PostgreSQL refuses to run as root, so under root initdb and pg_ctl run as the `postgres` user.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, http, root, script_exports};

/// `FRAISEQL_SERVER`, `FRAISEQL_CLI` and `PG18_BIN`, from `scripts/fraiseql.sh`, which installs what
/// is missing the first time a test process asks.
pub fn fraiseql_tools() -> &'static HashMap<String, String> {
    static TOOLS: OnceLock<HashMap<String, String>> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let tools = script_exports("fraiseql.sh");
        for name in ["FRAISEQL_SERVER", "FRAISEQL_CLI", "PG18_BIN"] {
            assert!(tools.contains_key(name), "scripts/fraiseql.sh printed no {name}: {tools:?}");
        }
        tools
    })
}

/// The user PostgreSQL runs as: `postgres` (uid, gid) when this process is root, else this process's own.
fn postgres_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| {
        let out = Command::new("id").args(args).output().expect("run id");
        assert!(out.status.success(), "id {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    (id(&["-u"]) == 0).then(|| (id(&["-u", "postgres"]), id(&["-g", "postgres"])))
}

/// One PostgreSQL cluster in `pg/` of a server's folder.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
    running: bool,
}

impl Postgres {
    /// A command for one of PostgreSQL's programs, run as its user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            // std drops root's supplementary groups when it switches user.
            command.uid(uid).gid(gid).env("HOME", &self.data);
        }
        command.current_dir(&self.data).stdin(Stdio::null());
        command
    }

    fn run(&self, program: &str, args: &[&str], log: &Path) {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("start {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n--- {}:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.running, false) {
            let data = self.data.to_str().unwrap();
            let _ = self.command("pg_ctl").args(["-D", data, "stop", "-m", "immediate", "-w"]).output();
        }
    }
}

pub struct FraiseQl {
    /// `http://127.0.0.1:PORT`; GraphQL is at `/graphql`.
    pub url: String,
    /// The server's folder: logs, configuration, compiled schema, the database.
    pub dir: PathBuf,
    server: Option<Child>,
    postgres: Option<Postgres>,
}

impl FraiseQl {
    /// Starts PostgreSQL 18 in a fresh folder with `tests/fraiseql/schema.sql` loaded, compiles
    /// `tests/fraiseql/schema.json`, and starts fraiseql-server with only this authentication: `[auth]`
    /// with `jwks_uri`, `audience`, `allowed_algorithms = ["ES256"]` and `issuer` when given. Returns once
    /// it answers; panics with the logs when something does not start.
    pub fn start(jwks_uri: &str, audience: &str, issuer: Option<&str>) -> Self {
        Self::start_with(jwks_uri, audience, issuer, "")
    }

    /// [`start`](Self::start) with more `[auth]` lines (TOML), e.g. `jwks_cache_ttl_secs = 1`: FraiseQL
    /// holds a fetched key set for that long (default 300 s) and looks again for an unknown `kid` at
    /// most every min(30 s, TTL).
    pub fn start_with(jwks_uri: &str, audience: &str, issuer: Option<&str>, auth_extra: &str) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let started = Instant::now();
        let tools = fraiseql_tools();
        let dir = std::env::temp_dir().join(format!(
            "keygate-fraiseql-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        // From here on a panic drops `this`, which stops whatever already runs.
        let mut this = Self { url: format!("http://127.0.0.1:{port}"), dir: dir.clone(), server: None, postgres: None };

        // PostgreSQL: its data folder and log belong to its user, and only it may enter the data folder.
        let user = postgres_user();
        let data = dir.join("pg");
        let pg_log = dir.join("postgres.log");
        std::fs::create_dir(&data).unwrap();
        std::fs::File::create(&pg_log).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pg_log, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let pg = this.postgres.insert(Postgres {
            bin: PathBuf::from(&tools["PG18_BIN"]),
            data: data.clone(),
            user,
            port: free_port(),
            running: false,
        });
        let data_arg = data.to_str().unwrap();
        pg.run(
            "initdb",
            &["-D", data_arg, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            &pg_log,
        );
        pg.running = true;
        let options = format!("-p {} -k {data_arg} -c listen_addresses=127.0.0.1 -c fsync=off", pg.port);
        pg.run(
            "pg_ctl",
            &["-D", data_arg, "-l", pg_log.to_str().unwrap(), "-o", &options, "-w", "-t", "60", "start"],
            &pg_log,
        );
        let database_url = pg.url();
        load_sql(&database_url, &std::fs::read_to_string(root().join("tests/fraiseql/schema.sql")).unwrap());

        // The schema, checked against the live database as it compiles.
        let compiled = dir.join("schema.compiled.json");
        let out = Command::new(&tools["FRAISEQL_CLI"])
            .arg("compile")
            .arg(root().join("tests/fraiseql/schema.json"))
            .arg("-o")
            .arg(&compiled)
            .args(["--database", &database_url])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run fraiseql-cli");
        assert!(
            out.status.success(),
            "fraiseql-cli compile failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut auth = format!(
            "[auth]\njwks_uri = {}\naudience = {}\nallowed_algorithms = [\"ES256\"]\n",
            toml_str(jwks_uri),
            toml_str(audience)
        );
        if let Some(issuer) = issuer {
            auth += &format!("issuer = {}\n", toml_str(issuer));
        }
        let config = format!(
            "schema_path = {}\ndatabase_url = {}\nbind_addr = \"127.0.0.1:{port}\"\ncors_enabled = false\n\n{auth}{auth_extra}\n",
            toml_str(compiled.to_str().unwrap()),
            toml_str(&database_url),
        );
        std::fs::write(dir.join("server.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("fraiseql.log")).unwrap();
        let mut command = Command::new(&tools["FRAISEQL_SERVER"]);
        command.arg("--config").arg(dir.join("server.toml"));
        // The server reads DATABASE_URL and FRAISEQL_* over its configuration: none from the test's environment.
        command.env_remove("DATABASE_URL");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FRAISEQL_") {
                command.env_remove(name);
            }
        }
        // Why a token was refused is logged at debug.
        command
            .env("RUST_LOG", "info,fraiseql_core::security=debug,fraiseql_server::middleware=debug")
            .env("NO_COLOR", "1")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        this.server = Some(command.spawn().expect("start fraiseql-server"));

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = this.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("fraiseql-server exited ({status}):\n{}", this.log());
            }
            if health(port) == Some(200) {
                break;
            }
            assert!(Instant::now() < deadline, "fraiseql-server did not answer within 60 s:\n{}", this.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("fraiseql: up at {} in {:?} ({})", this.url, started.elapsed(), dir.display());
        this
    }

    /// POST `{url}/graphql` with this JSON body, with `Authorization: Bearer <token>` when given:
    /// status and body.
    pub async fn graphql(&self, token: Option<&str>, body: &str) -> (u16, String) {
        let mut request = http()
            .post(format!("{}/graphql", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Everything fraiseql-server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fraiseql.log")).unwrap_or_default()
    }

    /// Everything PostgreSQL printed so far.
    pub fn postgres_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for FraiseQl {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(mut postgres) = self.postgres.take() {
            postgres.stop();
        }
        if std::thread::panicking() {
            // Leave the logs for whoever reads the failure.
            eprintln!("fraiseql: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The status of `GET /health`, if the server answers at all.
fn health(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Runs a SQL script (several statements) against the database, on a runtime of its own: the caller
/// may be inside a test's runtime, where blocking on another future is not allowed.
fn load_sql(database_url: &str, sql: &str) {
    let (url, sql) = (database_url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect to PostgreSQL 18");
            sqlx::raw_sql(&sql).execute(&mut connection).await.expect("load tests/fraiseql/schema.sql");
            connection.close().await.unwrap();
        })
    })
    .join()
    .expect("loading tests/fraiseql/schema.sql failed");
}

/// A TOML basic string.
fn toml_str(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
