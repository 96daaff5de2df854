//! A Kafka-protocol broker of a test's own (nisshi, from
//! `BILLING_TEST_NISSHI`), to stop, resume, restart, or start with TLS and
//! authentication; killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct OwnBroker {
    child: Child,
    port: u16,
}

impl OwnBroker {
    /// A broker on a free port keeping its topics in memory.
    pub fn start() -> Self {
        Self::start_on(super::free_addr().port(), "memory://nisshi/")
    }

    /// A broker on `port` keeping its topics in `storage` (nisshi's
    /// `--storage-engine`): a PostgreSQL URL keeps them across a restart.
    pub fn start_on(port: u16, storage: &str) -> Self {
        Self::start_with(port, storage, &[])
    }

    /// A broker on `port` with nisshi's `extra` arguments (`--cert`,
    /// `--key`, `--authentication`).
    pub fn start_with(port: u16, storage: &str, extra: &[&str]) -> Self {
        let nisshi = std::env::var("BILLING_TEST_NISSHI").unwrap_or_else(|_| {
            panic!("BILLING_TEST_NISSHI is not set: run the tests with `make test`")
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(nisshi)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--group-initial-rebalance-delay", "0s"])
            .args(["--storage-engine", storage])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nisshi");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nisshi did not listen on {port}");
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker and waits for it to be gone (a crash, for tests of
    /// an outage).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the broker.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // A stopped broker must be resumed to die; a dead one needs nothing.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
