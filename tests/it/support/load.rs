//! A load generator on loopback: clients that keep connections alive and clients that open a new
//! connection per request, all counting every failure. Bounded: it runs until stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    /// When each failure happened (the first 100,000): a soak tells failures inside a kill's
    /// window from the others.
    pub failed_at: Vec<std::time::Instant>,
}

impl Counts {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        if self.errors.len() < 10 {
            self.errors.push(error);
        }
        if self.failed_at.len() < 100_000 {
            self.failed_at.push(std::time::Instant::now());
        }
    }

    fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
        let room = 100_000usize.saturating_sub(self.failed_at.len());
        self.failed_at
            .extend(other.failed_at.into_iter().take(room));
        self.errors.extend(
            other
                .errors
                .into_iter()
                .take(10 - self.errors.len().min(10)),
        );
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Successful requests so far, across the clients: what `more` waits on.
    ok: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Counts>>,
}

impl Load {
    /// `url` must be on loopback.
    pub fn start(url: &str, keep_alive: usize, fresh: usize) -> Load {
        Self::start_from(url, keep_alive, fresh, None)
    }

    /// As [`Load::start`], every client connecting from `source` (a loopback address).
    pub fn start_from(
        url: &str,
        keep_alive: usize,
        fresh: usize,
        source: Option<std::net::IpAddr>,
    ) -> Load {
        Self::start_with(url, keep_alive, fresh, source, Duration::ZERO)
    }

    /// As [`Load::start`], each client pausing `pause` after each request: a steady rate for a
    /// long run that must leave the machine's cores to what it measures.
    pub fn start_paced(url: &str, keep_alive: usize, fresh: usize, pause: Duration) -> Load {
        Self::start_with(url, keep_alive, fresh, None, pause)
    }

    fn start_with(
        url: &str,
        keep_alive: usize,
        fresh: usize,
        source: Option<std::net::IpAddr>,
        pause: Duration,
    ) -> Load {
        assert!(source.is_none_or(|s| s.is_loopback()));
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "load goes to loopback only"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..keep_alive + fresh {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .local_address(source);
            if i >= keep_alive {
                b = b.pool_max_idle_per_host(0);
            }
            let client = b.build().unwrap();
            let (url, stop, ok) = (url.to_owned(), stop.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Counts::default();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => {
                                c.ok += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => c.fail(format!("body: {e:?}")),
                        },
                        Ok(r) => c.fail(format!("status {}", r.status())),
                        Err(e) => c.fail(format!("{e:?}")),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                c
            }));
        }
        Load { stop, ok, tasks }
    }

    /// Waits until `n` more requests have succeeded (traffic has gone through whatever just
    /// changed), with a deadline.
    pub async fn more(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the load made fewer than {n} more requests in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Counts::default();
        for t in self.tasks {
            total.add(t.await.unwrap());
        }
        total
    }
}
