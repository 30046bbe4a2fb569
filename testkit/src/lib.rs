//! What the services' process tests share (tests that start a real server binary and kill it
//! with SIGKILL): a free port, a server process that dies with the test however the test
//! ends, a client once the server answers, and a store's directory copied as a backup is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

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
