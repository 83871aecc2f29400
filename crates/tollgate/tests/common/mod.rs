//! What the process-level tests share: ports, start-up, and a load generator
//! that counts every request that did not complete as a failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tollgate serve` as a child process.
pub fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn wait_healthy(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = client();
    loop {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// A metric's value in a Prometheus text exposition (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub async fn scrape(admin: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Steady chat load: `clients` loops, every other one streaming. A request
/// counts as completed only with a 200 and, for a stream, a `[DONE]` and no
/// error event; anything else is recorded as a failure.
pub struct Load {
    pub plain: Arc<AtomicUsize>,
    pub streams: Arc<AtomicUsize>,
    pub failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, key: &str, model: &str, clients: usize, prompt: &str) -> Load {
        let plain = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(AtomicUsize::new(0));
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (plain, streams, failed, stop) =
                (plain.clone(), streams.clone(), failed.clone(), stop.clone());
            let (url, key, model, prompt) = (
                url.clone(),
                key.to_string(),
                model.to_string(),
                prompt.to_string(),
            );
            tasks.push(tokio::spawn(async move {
                let c = client();
                let stream = i % 2 == 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = serde_json::json!({"model": model, "stream": stream,
                        "messages": [{"role": "user", "content": prompt}]});
                    let r = c.post(&url).bearer_auth(&key).json(&body).send().await;
                    let outcome = match r {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(t) if !stream && t.contains("\"choices\"") => Ok(&plain),
                            Ok(t)
                                if stream
                                    && t.ends_with("data: [DONE]\n\n")
                                    && !t.contains("\"error\"") =>
                            {
                                Ok(&streams)
                            }
                            Ok(t) => Err(format!("broken body: {t}")),
                            Err(e) => Err(format!("body: {e}")),
                        },
                        Ok(r) => {
                            let s = r.status();
                            Err(format!(
                                "status {s}: {}",
                                r.text().await.unwrap_or_default()
                            ))
                        }
                        Err(e) => Err(format!("send: {e}")),
                    };
                    match outcome {
                        Ok(n) => {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            }));
        }
        Load {
            plain,
            streams,
            failed,
            stop,
            tasks,
        }
    }

    pub fn completed(&self) -> usize {
        self.plain.load(Ordering::Relaxed) + self.streams.load(Ordering::Relaxed)
    }

    /// Stop, let every running request finish, and return (plain, streams, failures).
    pub async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (
            self.plain.load(Ordering::Relaxed),
            self.streams.load(Ordering::Relaxed),
            failed,
        )
    }
}
