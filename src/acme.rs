//! Managed certificates: the domains of https rules without `tls` get theirs from an ACME CA
//! (RFC 8555, HTTP-01), renewed at two thirds of their lifetime, kept in the state directory.
//!
//! Owns: the ACME account (`<state>/acme/account-<CA>.json`, created once per CA), the
//! certificates (`<state>/acme/certs/<name>.json`, certificate chain and key together, so one
//! rename replaces both), the attempt record (`<state>/acme/attempts.json`, so a restart keeps
//! its backoff and never storms the CA), and the challenges pending at the CA. Every file is
//! 0600, written atomically.
//!
//! Does not: render or apply anything. The agent's loop asks for [`Certs::managed`] (what to
//! fill into the spec and which tokens to answer), applies, and tells [`Certs::applied`] which
//! tokens Envoy now answers; the manager task ([`run`]) tells the CA a challenge is ready only
//! after that. A certificate is only ever replaced by a newer one: the old one serves until then.

use crate::events::Event;
use crate::pipeline::Managed;
use crate::render::Challenges;
use crate::settings::{AcmeSettings, Settings};
use crate::spec::{self, Tls};
use crate::store;
use instant_acme::{Account, AccountCredentials};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};

/// A certificate as stored: what the CA sent and what the agent made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
}

/// Failed attempts for one name: the backoff survives restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub failures: u32,
    /// Unix seconds: not before this.
    pub next_at: i64,
    pub last_error: String,
}

/// What `status` and the metrics show of one managed certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertStatus {
    pub name: String,
    pub certificate_id: String,
    /// Unix seconds; absent while no certificate exists.
    pub not_after: Option<i64>,
    /// When it will be renewed (or the next attempt, after a failure).
    pub next_renewal: Option<i64>,
    pub failures: u32,
    pub last_error: Option<String>,
}

/// When a certificate valid from `not_before` to `not_after` is renewed: after `fraction` of
/// its lifetime.
pub fn renew_at(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    not_before + ((not_after - not_before) as f64 * fraction) as i64
}

/// When a name is next worked on: its renewal time, and not before the next attempt after a
/// failure. `None`: no certificate and no failure yet (due at once).
fn due_at(held: Option<&Stored>, attempt: Option<&Attempt>, fraction: f64) -> Option<i64> {
    let renewal = held.map(|c| renew_at(c.not_before, c.not_after, fraction));
    match (renewal, attempt.map(|a| a.next_at)) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    }
}

/// The wait after the `failures`-th failure in a row: doubling from `min` up to `max`.
pub fn backoff(failures: u32, min_s: u32, max_s: u32) -> i64 {
    let s = |n: u32| std::time::Duration::from_secs(n.into());
    crate::backoff::Backoff::after(s(min_s), s(max_s), failures).as_secs() as i64
}

/// The names a certificate file may be named after: the spec's DNS names (never a wildcard).
fn file_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The files under `<state>/acme`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(settings: &Settings) -> Store {
        Store {
            dir: settings.acme_dir(),
        }
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{name}.json"))
    }

    fn account_path(&self, directory_url: &str) -> PathBuf {
        let tag = &hex::encode(Sha256::digest(directory_url.as_bytes()))[..16];
        self.dir.join(format!("account-{tag}.json"))
    }

    fn attempts_path(&self) -> PathBuf {
        self.dir.join("attempts.json")
    }

    /// Every stored certificate, by name. An unreadable file is left where it is and skipped
    /// (logged): a new certificate is obtained in its place.
    pub fn certificates(&self) -> BTreeMap<String, Stored> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("certs")) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<Stored>(&b)?))
            {
                Ok(c) if file_safe(&c.name) && self.cert_path(&c.name) == path => {
                    out.insert(c.name.clone(), c);
                }
                Ok(_) => tracing::warn!(
                    "{}: not named after its certificate; skipped",
                    path.display()
                ),
                Err(err) => tracing::warn!("{}: unreadable ({err:#}); skipped", path.display()),
            }
        }
        out
    }

    pub fn save_certificate(&self, c: &Stored) -> anyhow::Result<()> {
        anyhow::ensure!(file_safe(&c.name), "{:?} is not a name to store", c.name);
        store::write_private(&self.cert_path(&c.name), &serde_json::to_vec_pretty(c)?)
    }

    pub fn attempts(&self) -> BTreeMap<String, Attempt> {
        std::fs::read(self.attempts_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_attempts(&self, a: &BTreeMap<String, Attempt>) -> anyhow::Result<()> {
        store::write_private(&self.attempts_path(), &serde_json::to_vec_pretty(a)?)
    }

    fn account(&self, directory_url: &str) -> Option<AccountCredentials> {
        let bytes = std::fs::read(self.account_path(directory_url)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets the account: the CA no longer knows it.
    fn drop_account(&self, directory_url: &str) {
        let _ = std::fs::remove_file(self.account_path(directory_url));
    }

    fn save_account(&self, directory_url: &str, c: &AccountCredentials) -> anyhow::Result<()> {
        store::write_private(
            &self.account_path(directory_url),
            &serde_json::to_vec_pretty(c)?,
        )
    }
}

/// What the agent and the manager task share.
#[derive(Debug, Default)]
struct Shared {
    /// Name → certificate, checked like a spec's own.
    held: BTreeMap<String, (Stored, Tls)>,
    challenges: Challenges,
    attempts: BTreeMap<String, Attempt>,
    /// Waiting for the agent to queue them.
    events: Vec<Event>,
}

/// The agent's handle on managed certificates.
#[derive(Clone)]
pub struct Certs {
    shared: Arc<Mutex<Shared>>,
    wanted: watch::Sender<BTreeSet<String>>,
    applied: watch::Sender<BTreeSet<String>>,
    /// Signalled when a certificate or a challenge changed: the agent renders again.
    pub changed: Arc<Notify>,
    store: Store,
}

impl Certs {
    /// Loads what the state directory holds: a restart serves the stored certificates and
    /// keeps the backoff of failed attempts.
    pub fn load(settings: &Settings, now: i64) -> Certs {
        let store = Store::new(settings);
        let mut shared = Shared {
            attempts: store.attempts(),
            ..Shared::default()
        };
        for (name, c) in store.certificates() {
            match spec::managed_tls(&name, &c.certificate_pem, &c.private_key_pem, now) {
                Ok(tls) => {
                    shared.held.insert(name, (c, tls));
                }
                Err(e) => tracing::warn!("stored certificate for {name} is not usable: {e}"),
            }
        }
        Certs {
            shared: Arc::new(Mutex::new(shared)),
            wanted: watch::channel(BTreeSet::new()).0,
            applied: watch::channel(BTreeSet::new()).0,
            changed: Arc::new(Notify::new()),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The certificates to fill in and the challenges to answer, for the next render.
    pub fn managed(&self) -> Managed {
        let s = self.lock();
        Managed {
            certificates: s
                .held
                .iter()
                .map(|(n, (_, tls))| (n.clone(), tls.clone()))
                .collect(),
            challenges: s.challenges.clone(),
        }
    }

    /// The names the current spec needs certificates for.
    pub fn want(&self, names: impl IntoIterator<Item = String>) {
        let names: BTreeSet<String> = names.into_iter().filter(|n| file_safe(n)).collect();
        self.wanted.send_if_modified(|w| {
            let changed = *w != names;
            *w = names;
            changed
        });
    }

    /// The challenge tokens the config Envoy now serves answers.
    pub fn applied(&self, tokens: impl IntoIterator<Item = String>) {
        let tokens: BTreeSet<String> = tokens.into_iter().collect();
        self.applied.send_if_modified(|a| {
            let changed = *a != tokens;
            *a = tokens;
            changed
        });
    }

    /// Events made since the last call, for the agent's queue.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// Each wanted name's certificate, its expiry and its next renewal.
    pub fn status(&self, settings: &AcmeSettings) -> Vec<CertStatus> {
        let s = self.lock();
        self.wanted
            .borrow()
            .iter()
            .map(|name| {
                let held = s.held.get(name).map(|(c, _)| c);
                let attempt = s.attempts.get(name);
                CertStatus {
                    name: name.clone(),
                    certificate_id: spec::managed_id(name),
                    not_after: held.map(|c| c.not_after),
                    next_renewal: due_at(held, attempt, settings.renew_at),
                    failures: attempt.map_or(0, |a| a.failures),
                    last_error: attempt.map(|a| a.last_error.clone()),
                }
            })
            .collect()
    }

    /// The next name to work on at `now`, or when to look again.
    fn next_due(&self, settings: &AcmeSettings, now: i64) -> Result<String, Option<i64>> {
        let s = self.lock();
        let mut soonest: Option<i64> = None;
        for name in self.wanted.borrow().iter() {
            let held = s.held.get(name).map(|(c, _)| c);
            let at = due_at(held, s.attempts.get(name), settings.renew_at).unwrap_or(now);
            if at <= now {
                return Ok(name.clone());
            }
            soonest = Some(soonest.map_or(at, |t: i64| t.min(at)));
        }
        Err(soonest)
    }

    fn set_challenge(&self, token: &str, key_auth: Option<&str>) {
        {
            let mut s = self.lock();
            match key_auth {
                Some(k) => s.challenges.insert(token.to_owned(), k.to_owned()),
                None => s.challenges.remove(token),
            };
        }
        self.changed.notify_one();
    }

    /// Waits until Envoy answers `token` (the agent applied a config with it).
    async fn served(&self, token: &str, within: Duration) -> anyhow::Result<()> {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(within, rx.wait_for(|a| a.contains(token)))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the load balancer did not serve the HTTP-01 challenge within {} s",
                    within.as_secs()
                )
            })?
            .map_err(|_| anyhow::anyhow!("the agent stopped"))?;
        Ok(())
    }

    fn succeeded(&self, name: &str, c: Stored, tls: Tls) -> anyhow::Result<()> {
        self.store.save_certificate(&c)?;
        let mut s = self.lock();
        let renewed = s.held.contains_key(name);
        s.events.push(Event::certificate_issued(
            name,
            &tls.id,
            c.not_after,
            renewed,
            SystemTime::now(),
        ));
        s.held.insert(name.to_owned(), (c, tls));
        if s.attempts.remove(name).is_some() {
            let _ = self.store.save_attempts(&s.attempts);
        }
        drop(s);
        self.changed.notify_one();
        Ok(())
    }

    fn failed(&self, name: &str, error: &str, wait_s: i64, now: i64) {
        let mut s = self.lock();
        let a = s.attempts.entry(name.to_owned()).or_default();
        a.failures += 1;
        a.next_at = now + wait_s;
        a.last_error = error.to_owned();
        let next = a.next_at;
        if let Err(e) = self.store.save_attempts(&s.attempts) {
            tracing::warn!("cannot record the failed attempt: {e:#}");
        }
        s.events.push(Event::certificate_failed(
            name,
            error,
            next,
            SystemTime::now(),
        ));
        drop(s);
        self.changed.notify_one();
    }
}

/// The manager: obtains each wanted name's certificate when it is missing or due for renewal,
/// one at a time, backing off after failures (the CA's rate limit: the longest wait). Runs
/// until the agent stops.
pub async fn run(certs: Certs, settings: Settings) {
    let acme = settings.acme.clone();
    let store = Store::new(&settings);
    let mut wanted = certs.wanted.subscribe();
    let mut account_cache: Option<Account> = None;
    // Long enough for the agent to render, hand over and confirm a config with the token.
    let served_within = Duration::from_secs(
        u64::from(settings.supervisor.confirm_timeout_s)
            + u64::from(settings.vpsie.poll_interval_s)
            + 30,
    );
    loop {
        let now = crate::pipeline::now_unix();
        let name = match certs.next_due(&acme, now) {
            Ok(name) => name,
            Err(at) => {
                let wait = at.map_or(Duration::from_secs(3600), |t| {
                    Duration::from_secs((t - now).clamp(1, 3600) as u64)
                });
                let _ = tokio::time::timeout(wait, wanted.changed()).await;
                continue;
            }
        };
        tracing::info!(%name, "obtaining a managed certificate");
        let attempt = async {
            let account = match &account_cache {
                Some(a) => a.clone(),
                None => {
                    let a = account(&acme, &store)
                        .await
                        .map_err(|e| (format!("ACME account: {e:#}"), false))?;
                    account_cache = Some(a.clone());
                    a
                }
            };
            issue(&certs, &account, &name, served_within)
                .await
                .map_err(|e| {
                    if account_gone(&e) {
                        tracing::warn!("the CA no longer knows the ACME account; a new one is made at the next attempt");
                        account_cache = None;
                        store.drop_account(&acme.directory_url);
                    }
                    (ca_text(&e), rate_limited(&e))
                })
        };
        let outcome =
            tokio::time::timeout(Duration::from_secs(acme.order_timeout_s.into()), attempt)
                .await
                .unwrap_or_else(|_| {
                    Err((
                        format!(
                            "no certificate within acme.order_timeout_s ({} s)",
                            acme.order_timeout_s
                        ),
                        false,
                    ))
                });
        let now = crate::pipeline::now_unix();
        match outcome
            .and_then(|(chain, key)| stored(&name, chain, key, now).map_err(|e| (e, false)))
        {
            Ok((c, tls)) => {
                tracing::info!(%name, not_after = c.not_after, "managed certificate obtained");
                if let Err(e) = certs.succeeded(&name, c, tls) {
                    tracing::error!(%name, "cannot store the new certificate: {e:#}");
                    certs.failed(
                        &name,
                        &format!("cannot store it: {e:#}"),
                        acme.retry_min_s.into(),
                        now,
                    );
                }
            }
            Err((error, limited)) => {
                let failures = certs.lock().attempts.get(&name).map_or(0, |a| a.failures) + 1;
                let wait = if limited {
                    i64::from(acme.retry_max_s)
                } else {
                    backoff(failures, acme.retry_min_s, acme.retry_max_s)
                };
                tracing::warn!(%name, %error, wait_s = wait, "managed certificate not obtained");
                certs.failed(&name, &error, wait, now);
            }
        }
    }
}

/// Checks what the CA sent like a spec's own certificate, and records its validity.
fn stored(name: &str, chain: String, key: String, now: i64) -> Result<(Stored, Tls), String> {
    let tls = spec::managed_tls(name, &chain, &key, now)
        .map_err(|e| format!("the CA's certificate is not usable: {e}"))?;
    let not_before = not_before(&tls.certificate_pem).unwrap_or(now);
    Ok((
        Stored {
            name: name.to_owned(),
            certificate_pem: tls.certificate_pem.clone(),
            private_key_pem: tls.private_key_pem.clone(),
            not_before,
            not_after: tls.not_after,
            issued_at: now,
        },
        tls,
    ))
}

/// The leaf's notBefore.
fn not_before(chain_pem: &str) -> Option<i64> {
    let block = pem::parse_many(chain_pem).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    Some(cert.validity().not_before.timestamp())
}

mod ca;
use ca::{account, account_gone, ca_text, issue, rate_limited};

#[cfg(test)]
mod tests;
