//! A load generator on loopback: clients that keep connections alive and clients that open a new
//! connection per request, all counting every failure. Bounded: it runs until stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
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
    tasks: Vec<JoinHandle<Counts>>,
}

impl Load {
    /// `url` must be on loopback.
    pub fn start(url: &str, keep_alive: usize, fresh: usize) -> Load {
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "load goes to loopback only"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..keep_alive + fresh {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10));
            if i >= keep_alive {
                b = b.pool_max_idle_per_host(0);
            }
            let client = b.build().unwrap();
            let (url, stop) = (url.to_owned(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Counts::default();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => c.ok += 1,
                            Err(e) => {
                                c.failed += 1;
                                if c.errors.len() < 10 {
                                    c.errors.push(format!("body: {e:?}"));
                                }
                            }
                        },
                        Ok(r) => {
                            c.failed += 1;
                            if c.errors.len() < 10 {
                                c.errors.push(format!("status {}", r.status()));
                            }
                        }
                        Err(e) => {
                            c.failed += 1;
                            if c.errors.len() < 10 {
                                c.errors.push(format!("{e:?}"));
                            }
                        }
                    }
                }
                c
            }));
        }
        Load { stop, tasks }
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
