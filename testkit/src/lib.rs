//! What the services' process tests share (tests that start a real server binary and kill it
//! with SIGKILL): a free port, a server process that dies with the test however the test
//! ends, a client once the server answers, and a store's directory copied as a backup is;
//! and for every test with the real model, where the repository and that model are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// The repository's root (this crate sits one level under it).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default model, fetched by scripts/fetch-model.sh (CI runs it first), or the one
/// `SOUK_MODEL_DIR` names.
pub fn model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SOUK_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "the model is missing at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

/// Copies the directory `from` (a stopped server's store) to `to`, files and folders, as a
/// file-level backup takes it.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The names of what the directory `dir` holds, sorted.
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A port free on loopback a moment ago, and not handed out before by this process: the
/// system may give the same free port to two binds in a row (a test's primary and replica
/// then met on one port).
pub fn free_port() -> u16 {
    static HANDED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

/// `command`, run by bash with its files capped at `kib` KiB (`ulimit -f`, SIGXFSZ ignored): a
/// write past the cap fails with EFBIG, as a write to a full disk fails with ENOSPC.
pub fn with_file_limit(command: &Command, kib: u32) -> Command {
    let mut limited = Command::new("bash");
    limited
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args());
    limited
}

/// Asserts that `status` is a store's refusal of a write once one failed on its disk (capped
/// by [`with_file_limit`]): UNAVAILABLE, naming the error and the restart it needs.
pub fn assert_disk_refused(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let said = status.message().to_lowercase();
    assert!(
        said.contains("cannot write to its disk (file too large")
            && said.contains("until the service restarts"),
        "{status:?}"
    );
}

/// A server process, killed when dropped (a failed assertion must not leave it running).
pub struct Process(Child);

impl Process {
    /// Starts `command` with its output discarded.
    pub fn spawn(mut command: Command) -> Self {
        Self(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGTERM, and whether the process is gone within `seconds` (if not, the drop kills it).
    pub fn terminate(&mut self, seconds: u64) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while std::time::Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client `ready` makes of a channel to the server on `port`, once the server answers it
/// (`ready` returns `None` until then); panics after 30 s naming `server`.
pub async fn connect_when<T>(
    port: u16,
    server: &str,
    mut ready: impl AsyncFnMut(Channel) -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            && let Some(client) = ready(channel).await
        {
            return client;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{server} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What an HTTP/1.1 server answered: status code, headers (names lower case) and body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 call on a fresh connection (`connection: close`), as `curl` makes it: `method`
/// `path` with `headers` and `body` (a `content-length` is added). Reads the whole reply; the
/// servers under test answer with a `content-length`, never chunked.
pub async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    // Head and body in one write: a server that answers from the head alone and closes
    // (`connection: close`) before a late body arrives resets the connection, and the
    // reply is lost (seen once in CI as "connection reset by peer").
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// [`http_call`] of `POST path` with a JSON body, as a shop backend calls souk's HTTP gateway.
pub async fn post_json(addr: std::net::SocketAddr, path: &str, json: &str) -> HttpReply {
    http_call(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        json.as_bytes(),
    )
    .await
}

/// A cleartext HTTP/2 connection to `addr` (prior knowledge), as a proxy or a Connect client
/// opens one to a backend; its driver runs on a spawned task, which ends (with the
/// connection's error, if any) once every handle to the connection is dropped.
pub async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    (client, tokio::spawn(connection))
}

/// One call on an HTTP/2 connection, [`http_call`]'s twin: `method` `path` with `headers` and
/// `body` (none when empty). Returns the status, the headers and the whole body.
pub async fn h2_call(
    client: &h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), body.is_empty())
        .unwrap();
    if !body.is_empty() {
        send.send_data(bytes::Bytes::from(body.to_string()), true)
            .unwrap();
    }
    let (parts, mut received) = response.await.unwrap().into_parts();
    let mut text = Vec::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk.unwrap();
        let _ = received.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8(text).unwrap(),
    )
}

/// Values tried for a flag that takes one: a number, a fraction, `auto`, a word, a pair, a
/// day, an address, a URL, a list.
const FLAG_VALUES: &[&str] = &[
    "1",
    "0.5",
    "auto",
    "x",
    "a=b",
    "2026-03-01",
    "127.0.0.1:1",
    "http://127.0.0.1:1",
    "1,1,1,1,1",
];

/// Parses `T`'s command line (`bin` names the program) for every command that runs (each
/// leaf of its subcommands) with what it requires, then once more for each of its flags set
/// (each value of [`FLAG_VALUES`] or of the flag's own choices): panics listing every line
/// that did not parse with only its requirements, or whose parse panicked. Clap's derive
/// checks a field's type against its parser only when the field is read, so a mismatch (an
/// `Option<f64>` field whose parser returns `Option<f64>`) builds, passes
/// `Command::debug_assert`, and panics on every call of its command; a refused value (a clap
/// error) is fine here. `extra` gives, by command path, arguments that a leaf needs beyond
/// its formally required ones (one of a group: `train fusion --labels F`).
pub fn every_flag_reads<T: clap::Parser>(bin: &str, extra: &[(&[&str], &[&str])]) {
    fn leaves(
        command: &clap::Command,
        path: Vec<String>,
        out: &mut Vec<(Vec<String>, clap::Command)>,
    ) {
        let subcommands: Vec<_> = command
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subcommands.is_empty() {
            out.push((path, command.clone()));
            return;
        }
        for sub in subcommands {
            let mut next = path.clone();
            next.push(sub.get_name().to_string());
            leaves(sub, next, out);
        }
    }
    let value = |arg: &clap::Arg| -> Vec<String> {
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        if choices.is_empty() {
            FLAG_VALUES.iter().map(|v| v.to_string()).collect()
        } else {
            choices
        }
    };
    let parse = |argv: &[String]| {
        std::panic::catch_unwind(|| T::try_parse_from(argv).map(drop).map_err(|e| e.kind()))
    };
    let mut root = T::command();
    root.build(); // settles each argument's number of values
    let mut all = Vec::new();
    leaves(&root, Vec::new(), &mut all);
    let mut failed = Vec::new();
    for (path, command) in &all {
        let mut argv = vec![bin.to_string()];
        argv.extend(path.iter().cloned());
        let mut positionals = Vec::new();
        for arg in command.get_arguments().filter(|a| a.is_required_set()) {
            let first = value(arg).swap_remove(0);
            match arg.get_long() {
                Some(long) => argv.extend([format!("--{long}"), first]),
                None => positionals.push(first),
            }
        }
        for (name, more) in extra {
            if path.iter().map(String::as_str).eq(name.iter().copied()) {
                argv.extend(more.iter().map(|s| s.to_string()));
            }
        }
        match parse(&[argv.clone(), positionals.clone()].concat()) {
            Ok(Ok(())) => {}
            Ok(Err(kind)) => failed.push(format!("{}: {kind:?}", argv.join(" "))),
            Err(_) => failed.push(format!("{}: panicked", argv.join(" "))),
        }
        let optional = command.get_arguments().filter(|a| {
            !a.is_required_set()
                && !a.is_positional()
                && a.get_long().is_some()
                && !a.is_global_set()
        });
        for arg in optional {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let tries: Vec<Vec<String>> = if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                value(arg)
                    .into_iter()
                    .map(|v| vec![flag.clone(), v])
                    .collect()
            } else {
                vec![vec![flag.clone()]]
            };
            for set in tries {
                let line = [argv.clone(), set.clone(), positionals.clone()].concat();
                if parse(&line).is_err() {
                    failed.push(format!("{}: panicked", line.join(" ")));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The text of `/metrics` on `port`.
pub async fn scrape_metrics(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let reply = http_call(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// The value of the first sample in `scrape` of `series`: a metric name, optionally with
/// labels that the sample must carry (in any order among its others), e.g.
/// `souk_rank_first_pass_total{pass="scan"}`.
pub fn metric_value(scrape: &str, series: &str) -> f64 {
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let labels: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
        .collect();
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let sample = l.split(' ').next().unwrap_or("");
            let (n, rest) = sample.split_once('{').unwrap_or((sample, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{scrape}"))
}

/// `souk_store_write_failed{reason}` on the metrics port `port`: 1 once the service's store
/// failed a write on its disk for `reason` (`disk_full`, `io_error`).
pub async fn store_write_failed(port: u16, reason: &str) -> f64 {
    let scrape = scrape_metrics(port).await;
    metric_value(
        &scrape,
        &format!("souk_store_write_failed{{reason=\"{reason}\"}}"),
    )
}
