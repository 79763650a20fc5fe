//! The agent: follows the VPSie API, hands what changed to the supervisor, reports what happened.
//!
//! Owns: the reconcile loop, its persisted state (`<state_dir>/agent.json`: applied hash and
//! epoch, last poll, last event sent) and the event queue's delivery. Does not: touch Envoy
//! (only the supervisor does), so killing or restarting the agent never costs a request.
//!
//! One cycle: fetch → 304, or the same config hash as applied → nothing. An invalid spec → one
//! `config_rejected` per distinct spec, the running config untouched. A valid one → render →
//! supervisor (validate, hot restart, LIVE) → `config_applied`, `reload_failed` or
//! `critical_failure`. A failed fetch changes nothing: the last good config keeps serving.
//!
//! Signals (mapped in `main`): TERM and INT finish the current step, flush events within a
//! deadline and exit 0; HUP resyncs at once and re-applies even an unchanged hash.

use crate::acme;
use crate::api::{self, ApiClient, Fetched};
use crate::events::{Event, EventQueue};
use crate::metrics::AgentMetrics;
use crate::pipeline;
use crate::render;
use crate::resolve::{self, Resolved, Resolver};
use crate::settings::Settings;
use crate::spec::{self, Finding};
use crate::store;
use crate::supervisor::client;
use crate::supervisor::protocol::{ApplyMethod, ApplyOutcome, ApplyResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Events kept while the API is away; the oldest go first.
pub const QUEUE_CAPACITY: usize = 1000;
/// How long a stopping agent keeps trying to deliver queued events.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
const MAX_EVENT_BACKOFF: Duration = Duration::from_secs(60);

/// What the agent remembers across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub applied_hash: Option<String>,
    /// When the agent saw `applied_hash` go live (RFC 3339).
    pub applied_at: Option<String>,
    pub epoch: Option<u32>,
    /// The last spec refused, by the hash of its body, so that it is reported once.
    pub rejected: Option<String>,
    /// The last config that could not be handed over or stored (a full disk...), so that the
    /// failure is reported once while every poll tries again.
    #[serde(default)]
    pub failed: Option<String>,
    /// The last config that left the supervisor critical, likewise reported once. Kept apart
    /// from `failed`: a config that failed to store first and then left Envoy down must still
    /// report the critical failure.
    #[serde(default)]
    pub critical: Option<String>,
    pub last_poll: Option<String>,
    pub last_poll_result: Option<String>,
    pub last_event_sent: Option<String>,
    /// Managed certificates the spec needs: expiry, next renewal, failures.
    #[serde(default)]
    pub certificates: Vec<acme::CertStatus>,
}

/// How one cycle ended; `once` turns it into an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied {
        hash: String,
        epoch: u32,
    },
    /// The spec is invalid (2) or Envoy refused the config (3).
    Rejected {
        hash: String,
        by_envoy: bool,
        errors: Vec<Finding>,
    },
    /// The new config failed at runtime; the previous one serves.
    RolledBack {
        hash: String,
    },
    /// The config could not be rendered, handed over or stored (a full or read-only disk, a
    /// validation that could not run): nothing changed, the previous config serves, and every
    /// poll tries again until the fault goes.
    Failed {
        hash: String,
        error: String,
    },
    Critical {
        hash: String,
    },
    /// The API or the supervisor could not be reached; nothing changed.
    Unreachable(String),
}

pub struct Agent {
    settings: Settings,
    api: ApiClient,
    queue: EventQueue,
    state: AgentState,
    event_backoff: Duration,
    next_event_attempt: Option<Instant>,
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
    dropped_seen: u64,
    /// Backend host names: where they are looked up (made on first need), their answers, the
    /// problems already reported, and the last spec body, re-reconciled when an answer expires
    /// while the API says "not modified".
    resolver: Option<Resolver>,
    answers: resolve::Cache,
    reported: HashSet<String>,
    last_body: Option<Vec<u8>>,
    /// The last config rendered: an endpoint-only change rewrites only its endpoint lists.
    render_cache: render::splice::Cache,
    /// The last spec fetched failed validation: each poll judges it again.
    spec_refused: bool,
    /// Managed certificates (ACME): what is held, the challenges pending, the manager's events.
    certs: acme::Certs,
}

/// What `/healthz` and `/readyz` read, shared with the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds of the loop's last turn.
    pub heartbeat: AtomicU64,
    /// A config has been applied (by this agent or before its restart).
    pub applied: AtomicBool,
}

fn now_str() -> String {
    crate::events::rfc3339(SystemTime::now())
}

impl Agent {
    pub fn new(settings: Settings) -> anyhow::Result<Agent> {
        Self::with_api(ApiClient::new(&settings)?, settings)
    }

    /// With a client built elsewhere (tests resolve names to loopback with one).
    pub fn with_api(api: ApiClient, settings: Settings) -> anyhow::Result<Agent> {
        store::create_private_dir(&settings.state_dir)?;
        let queue = EventQueue::open(&settings.event_queue_path(), QUEUE_CAPACITY)?;
        let state_path = settings.agent_state_path();
        // Damaged, the state is only bookkeeping: the next poll finds out what serves, and at
        // worst an event is reported again (never lost).
        let state: AgentState = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    "ignoring unreadable state file {}: {e}; starting afresh",
                    state_path.display()
                );
                AgentState::default()
            }),
            Err(_) => AgentState::default(),
        };
        let metrics = Arc::new(AgentMetrics::new());
        let health = Arc::new(Health::default());
        health
            .applied
            .store(state.applied_hash.is_some(), Ordering::Relaxed);
        metrics.events_queued.set(queue.len() as i64);
        let dropped_seen = queue.dropped();
        let certs = acme::Certs::load(&settings, pipeline::now_unix());
        Ok(Agent {
            settings,
            api,
            queue,
            state,
            event_backoff: Duration::from_secs(1),
            next_event_attempt: None,
            metrics,
            health,
            dropped_seen,
            resolver: None,
            answers: resolve::Cache::default(),
            reported: HashSet::new(),
            last_body: None,
            render_cache: render::splice::Cache::default(),
            spec_refused: false,
            certs,
        })
    }

    /// Looks backend host names up here instead of in the system's DNS (tests map names to
    /// loopback this way, without touching /etc/hosts).
    pub fn set_resolver(&mut self, resolver: Resolver) {
        self.resolver = Some(resolver);
    }

    /// Resolves (where an answer expired) and judges the spec's host names; reports each
    /// distinct problem once, as an event and a metric.
    async fn resolve(&mut self, spec: &spec::Spec) -> Resolved {
        let names = resolve::names(spec);
        if names.is_empty() {
            return Resolved::new();
        }
        if self.resolver.is_none() {
            match Resolver::system() {
                Ok(r) => self.resolver = Some(r),
                Err(e) => tracing::error!("backend host names cannot be resolved: {e:#}"),
            }
        }
        let empty = Resolver::Map {
            answers: Default::default(),
            ttl: resolve::MAX_AGE,
        };
        let resolver = self.resolver.as_ref().unwrap_or(&empty);
        let (resolved, problems) = self
            .answers
            .resolve(
                resolver,
                &names,
                self.settings.dev.allow_loopback_backends,
                Instant::now(),
            )
            .await;
        for p in problems {
            let key = p.message();
            if self.reported.insert(key.clone()) {
                tracing::warn!("{key}");
                let kind = match p {
                    resolve::Problem::Refused { .. } => "refused",
                    resolve::Problem::Unresolved { .. } => "unresolved",
                };
                self.metrics
                    .backend_problems
                    .with_label_values(&[kind])
                    .inc();
                self.report(Event::backend_host_problem(&p, SystemTime::now()));
            }
        }
        resolved
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }

    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    fn beat(&self) {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.health.heartbeat.store(now, Ordering::Relaxed);
    }

    fn count_queue(&mut self) {
        self.metrics.events_queued.set(self.queue.len() as i64);
        self.metrics
            .events_unsaved
            .set(i64::from(self.queue.unsaved()));
        let dropped = self.queue.dropped();
        if dropped > self.dropped_seen {
            self.metrics
                .events_dropped
                .inc_by(dropped - self.dropped_seen);
            self.dropped_seen = dropped;
        }
    }

    fn save(&mut self) {
        self.state.certificates = self.certs.status(&self.settings.acme);
        let result = serde_json::to_vec_pretty(&self.state)
            .map_err(anyhow::Error::from)
            .and_then(|b| store::write_private(&self.settings.agent_state_path(), &b));
        if let Err(e) = result {
            tracing::error!("cannot save the agent state: {e:#}");
        }
    }

    fn report(&mut self, event: Event) {
        // Logged once queued, with its id: the line an operator (or the soak benchmark) can
        // match against what the API recorded.
        let (kind, id, message) = (event.kind.as_str(), event.id.clone(), event.message.clone());
        match self.queue.push(event) {
            Ok(()) => tracing::info!(kind, %id, "{message}"),
            Err(e) => tracing::error!(kind, %id, "{message}: {e:#}"),
        }
        self.count_queue();
        self.next_event_attempt = Some(Instant::now());
    }

    /// Queues `agent_started` with the agent's and Envoy's versions.
    pub async fn started(&mut self) {
        let envoy_version = envoy_version(&self.settings).await;
        self.metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &envoy_version])
            .set(1);
        self.report(Event::agent_started(
            env!("CARGO_PKG_VERSION"),
            &envoy_version,
            SystemTime::now(),
        ));
    }

    /// One reconcile step. `force` (SIGHUP) fetches the whole spec and re-applies it.
    pub async fn cycle(&mut self, force: bool) -> Outcome {
        self.beat();
        if self.queue.unsaved() {
            match self.queue.save_pending() {
                Ok(()) => tracing::info!("the event queue is on disk again"),
                Err(e) => tracing::debug!("{e:#}"),
            }
            self.count_queue();
        }
        self.queue_certificate_events();
        let outcome = self.cycle_inner(force).await;
        let result = match &outcome {
            Outcome::Unchanged
                if self.state.last_poll_result.as_deref() == Some("not modified") =>
            {
                "not_modified"
            }
            Outcome::Unchanged => "unchanged",
            Outcome::Applied { .. } => "applied",
            Outcome::Rejected { .. } => "rejected",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Failed { .. } => "failed",
            Outcome::Critical { .. } => "critical",
            Outcome::Unreachable(_) => "unreachable",
        };
        self.metrics.polls.with_label_values(&[result]).inc();
        if let Ok(s) = client::status(&self.settings).await {
            self.report_stuck_transitions(&s);
            self.metrics
                .envoy_up
                .set(i64::from(s.envoy_state == "LIVE"));
            if let Some(e) = s.epoch {
                self.metrics.envoy_epoch.set(e.into());
            }
        } else {
            self.metrics.envoy_up.set(0);
        }
        self.beat();
        outcome
    }

    /// Renders the last spec again (a managed certificate or a challenge changed) and applies
    /// it if that changed the config; queues the certificate manager's events.
    pub async fn refresh(&mut self) -> Outcome {
        self.beat();
        self.queue_certificate_events();
        let Some(body) = self.last_body.take() else {
            return Outcome::Unchanged;
        };
        let outcome = self.reconcile(&body, false).await;
        self.last_body = Some(body);
        if outcome != Outcome::Unchanged {
            self.state.last_poll_result = Some(format!("{outcome:?}"));
        }
        self.save();
        self.beat();
        outcome
    }

    /// A pool that did not finish moving in time is reported once: the event's id is the
    /// transition's, so a report repeated by a restarted agent is one event at the API.
    fn report_stuck_transitions(&mut self, s: &crate::supervisor::protocol::Status) {
        for t in &s.transitions {
            let Some(hosts) = &t.stuck else { continue };
            if !self.reported.insert(format!("transition {}", t.id)) {
                continue;
            }
            let event = Event::transition_stuck(
                &t.config_hash,
                s.epoch,
                &t.pool,
                hosts,
                t.old_hosts,
                SystemTime::now(),
            )
            .with_id(Some(&t.id));
            self.report(event);
        }
    }

    fn queue_certificate_events(&mut self) {
        for e in self.certs.take_events() {
            self.metrics
                .acme_attempts
                .with_label_values(&[match e.kind {
                    crate::events::EventKind::CertificateIssued => "issued",
                    crate::events::EventKind::CertificateRenewed => "renewed",
                    _ => "failed",
                }])
                .inc();
            self.report(e);
        }
    }

    async fn cycle_inner(&mut self, force: bool) -> Outcome {
        // A supervisor that is critical could not start what it holds (its stored config lost or
        // damaged with the machine, say): it gets the spec again, whole, at every poll until it
        // serves. (Not when it merely serves another config: that may be an operator's `apply`.)
        let force = force
            || match client::status(&self.settings).await {
                Ok(s) if s.critical.is_some() => {
                    tracing::warn!(
                        "the supervisor is critical ({}); applying the spec again",
                        s.critical.as_deref().unwrap_or("")
                    );
                    true
                }
                _ => false,
            };
        if force {
            self.api.forget_etag();
        }
        let started = Instant::now();
        let fetched = self.api.fetch().await;
        self.metrics
            .api_request_duration
            .with_label_values(&["fetch"])
            .observe(started.elapsed().as_secs_f64());
        self.state.last_poll = Some(now_str());
        let body = match fetched {
            Err(e) => {
                tracing::warn!("poll failed, the running config keeps serving: {e}");
                self.state.last_poll_result = Some(format!("error: {e}"));
                self.save();
                return Outcome::Unreachable(e.to_string());
            }
            Ok(Fetched::NotModified) => {
                self.state.last_poll_result = Some("not modified".into());
                // The spec is the same, but a host name's answer may have expired: look again,
                // and apply if what the names resolve to changed.
                // A spec refused by validation is judged again at every poll: a certificate's
                // validity depends on the clock (one not valid yet, a clock set right again).
                let expired = self
                    .answers
                    .next_expiry()
                    .is_some_and(|t| t <= Instant::now())
                    || self.spec_refused;
                let mut outcome = Outcome::Unchanged;
                if expired {
                    if let Some(body) = self.last_body.take() {
                        outcome = self.reconcile(&body, false).await;
                        self.last_body = Some(body);
                        if outcome != Outcome::Unchanged {
                            self.state.last_poll_result = Some(format!("{outcome:?}"));
                        }
                    }
                }
                self.save();
                return outcome;
            }
            Ok(Fetched::Spec { body, .. }) => body,
        };
        let outcome = self.reconcile(&body, force).await;
        self.last_body = Some(body);
        self.state.last_poll_result = Some(format!("{outcome:?}"));
        self.save();
        outcome
    }

    async fn reconcile(&mut self, body: &[u8], force: bool) -> Outcome {
        let now = pipeline::now_unix();
        self.spec_refused = false;
        let loaded = match pipeline::load(body, &self.settings, now) {
            Ok(l) => l,
            Err(errors) => {
                self.spec_refused = true;
                let body_hash = rejected_hash(body);
                if self.state.rejected.as_deref() != Some(body_hash.as_str()) {
                    tracing::warn!("{errors}");
                    self.metrics.spec_rejections.inc();
                    self.report(Event::config_rejected(
                        &body_hash,
                        &errors.0,
                        SystemTime::now(),
                    ));
                    self.state.rejected = Some(body_hash.clone());
                } else {
                    tracing::debug!("still refused: {errors}");
                }
                return Outcome::Rejected {
                    hash: body_hash,
                    by_envoy: false,
                    errors: errors.0,
                };
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("spec warning: {w}");
        }
        let mut loaded = loaded;
        let resolved = self.resolve(&loaded.spec).await;
        // Managed certificates fill the domains waiting for them; the pending challenges are
        // answered on the redirect port. Both are part of the config's hash.
        self.certs.want(loaded.spec.managed_names());
        let managed = self.certs.managed();
        let hash = pipeline::complete(&mut loaded, &resolved, &managed, &self.settings);
        if !force && self.state.applied_hash.as_deref() == Some(hash.as_str()) {
            self.certs.applied(managed.challenges.keys().cloned());
            // What serves is this spec: a restarted agent reports its certificates' expiry
            // without waiting for a change.
            self.metrics.set_certificates(&loaded.spec);
            return Outcome::Unchanged;
        }
        let prepared = match pipeline::finish_cached(
            loaded,
            &resolved,
            &managed,
            &self.settings,
            &mut self.render_cache,
        ) {
            Ok((p, how)) => {
                let label = match how {
                    render::splice::How::Full => "full",
                    render::splice::How::Spliced { changed } => {
                        tracing::debug!(changed, "endpoint-only change: endpoint lists rewritten");
                        "spliced"
                    }
                };
                self.metrics.renders.with_label_values(&[label]).inc();
                p
            }
            Err(e) => return self.failed(hash, e.to_string()),
        };
        let span = tracing::info_span!("apply", %hash);
        match client::hand_over_raw(&prepared, &self.settings, force)
            .instrument(span)
            .await
        {
            Err(e) => {
                tracing::error!(
                    "cannot hand the config to the supervisor (will retry at the next poll): {e:#}"
                );
                // Without this, the next poll's 304 would look like "nothing to do".
                self.api.forget_etag();
                Outcome::Unreachable(format!("{e:#}"))
            }
            Ok(out) => {
                let outcome = self.record(out);
                if let Outcome::Applied { .. } = &outcome {
                    // Envoy answers these now: the CA may be told to look.
                    self.certs.applied(managed.challenges.keys().cloned());
                    self.metrics.set_certificates(&prepared.loaded.spec);
                }
                // A critical failure, or one of the machine, is retried at every poll; a
                // rolled-back config is not (it would fail again): it waits for a new spec or a
                // HUP.
                if matches!(outcome, Outcome::Critical { .. } | Outcome::Failed { .. }) {
                    self.api.forget_etag();
                }
                outcome
            }
        }
    }

    /// Turns the supervisor's answer into state and events.
    fn record(&mut self, out: ApplyOutcome) -> Outcome {
        let hash = out.hash.clone();
        let now = SystemTime::now();
        let label = match out.result {
            ApplyResult::Applied => Some("applied"),
            ApplyResult::Unchanged => None,
            ApplyResult::Rejected => Some("rejected"),
            ApplyResult::RolledBack => Some("rolled_back"),
            ApplyResult::Critical => Some("critical"),
            ApplyResult::Error => Some("error"),
        };
        if let Some(l) = label {
            self.metrics.applies.with_label_values(&[l]).inc();
        }
        match out.result {
            ApplyResult::Applied | ApplyResult::Unchanged => {
                let epoch = out.epoch.unwrap_or(0);
                self.metrics.set_config(&hash, epoch);
                self.health.applied.store(true, Ordering::Relaxed);
                // Unchanged for the supervisor but not applied as far as this agent knows: an
                // agent killed while handing it over. The supervisor says how it was applied,
                // so the API still hears of it, once.
                let missed = out.result == ApplyResult::Unchanged
                    && out.method.is_some()
                    && self.state.applied_hash.as_deref() != Some(hash.as_str());
                if out.result == ApplyResult::Applied || missed {
                    self.metrics
                        .apply_duration
                        .observe(out.apply_ms as f64 / 1000.0);
                    self.metrics.last_apply.set(
                        SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    );
                    self.report(
                        Event::config_applied(
                            &hash,
                            out.previous_hash.as_deref(),
                            epoch,
                            out.apply_ms,
                            out.method.unwrap_or(ApplyMethod::HotRestart).as_str(),
                            out.error.as_deref(),
                            now,
                        )
                        .with_id(out.apply_id.as_deref()),
                    );
                }
                self.state.applied_hash = Some(hash.clone());
                self.state.applied_at = Some(now_str());
                self.state.epoch = Some(epoch);
                self.state.rejected = None;
                self.state.failed = None;
                self.state.critical = None;
                Outcome::Applied { hash, epoch }
            }
            ApplyResult::Rejected => {
                let finding = Finding {
                    path: String::new(),
                    message: out.error.unwrap_or_default(),
                };
                if self.state.rejected.as_deref() != Some(hash.as_str()) {
                    self.metrics.spec_rejections.inc();
                    self.report(Event::config_rejected(
                        &hash,
                        std::slice::from_ref(&finding),
                        now,
                    ));
                    self.state.rejected = Some(hash.clone());
                }
                Outcome::Rejected {
                    hash,
                    by_envoy: true,
                    errors: vec![finding],
                }
            }
            ApplyResult::RolledBack => {
                let mut error = out.error.unwrap_or_default();
                if !out.envoy_log.is_empty() {
                    error.push_str("\nenvoy: ");
                    error.push_str(&out.envoy_log.join("\nenvoy: "));
                }
                self.report(Event::reload_failed(&hash, out.epoch, &error, now));
                Outcome::RolledBack { hash }
            }
            // Nothing reached Envoy: the running config serves.
            ApplyResult::Error => self.failed(hash, out.error.unwrap_or_default()),
            ApplyResult::Critical => {
                // Once per config: a critical supervisor gets the spec again at every poll.
                if self.state.critical.as_deref() != Some(hash.as_str()) {
                    self.report(Event::critical_failure(
                        &hash,
                        out.epoch,
                        out.error.as_deref().unwrap_or(""),
                        out.restore_error.as_deref().unwrap_or(""),
                        now,
                    ));
                    self.state.critical = Some(hash.clone());
                }
                Outcome::Critical { hash }
            }
        }
    }

    /// A config that could not be rendered, handed over or stored: `reload_failed` (the previous
    /// config serves) once per config, however many polls it takes the fault to go.
    fn failed(&mut self, hash: String, error: String) -> Outcome {
        tracing::error!(%hash, "the config could not be applied; the previous one serves: {error}");
        if self.state.failed.as_deref() != Some(hash.as_str()) {
            self.report(Event::reload_failed(
                &hash,
                self.state.epoch,
                &error,
                SystemTime::now(),
            ));
            self.state.failed = Some(hash.clone());
        }
        Outcome::Failed { hash, error }
    }

    /// Sends queued events, oldest first, until the queue is empty or the API fails; backs off
    /// after a failure. Returns how many were delivered.
    pub async fn flush_events(&mut self) -> usize {
        let mut sent = 0;
        while let Some(event) = self.queue.peek().cloned() {
            let started = Instant::now();
            let sent_result = self.api.post_event(&event).await;
            self.metrics
                .api_request_duration
                .with_label_values(&["event"])
                .observe(started.elapsed().as_secs_f64());
            match sent_result {
                Ok(()) => {
                    self.metrics.events_sent.inc();
                    if let Err(e) = self.queue.pop() {
                        // Delivered all the same; the file catches up later (save_pending).
                        tracing::error!("{e:#}");
                    }
                    sent += 1;
                    self.state.last_event_sent =
                        Some(format!("{} at {}", event.kind.as_str(), now_str()));
                    self.event_backoff = Duration::from_secs(1);
                    self.next_event_attempt = None;
                }
                Err(e) => {
                    tracing::warn!(
                        queued = self.queue.len(),
                        "cannot deliver events yet ({e}); retrying in {:?}",
                        self.event_backoff
                    );
                    self.next_event_attempt = Some(Instant::now() + self.event_backoff);
                    self.event_backoff = (self.event_backoff * 2).min(MAX_EVENT_BACKOFF);
                    break;
                }
            }
        }
        if sent > 0 {
            self.save();
        }
        self.count_queue();
        sent
    }
}

/// Fields the contract calls informational: they change without the load balancer changing.
const INFORMATIONAL: &[&str] = &[
    "created_on",
    "updated_on",
    "traffic",
    "dc_name",
    "dcId",
    "boxsize_id",
    "user_id",
    "created_by",
    "default_ip",
    "vmIdentifier",
    "status",
    "type",
    "proxy_mode",
];

/// Identifies a refused spec so that it is reported once: SHA-256 of its JSON without the
/// informational fields, keys sorted. (A hash of the raw body would change with every
/// `traffic` update and report the same mistake at every poll.)
pub fn rejected_hash(body: &[u8]) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !INFORMATIONAL.contains(&k.as_str()));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            strip(&mut v);
            // serde_json's map is ordered by key, so this serialisation is canonical.
            hex::encode(Sha256::digest(v.to_string().as_bytes()))
        }
        Err(_) => hex::encode(Sha256::digest(body)),
    }
}

/// Envoy's version from `envoy --version` (`... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse_envoy_version(text: &str) -> Option<String> {
    let after = text.split("version: ").nth(1)?;
    after.split('/').nth(1).map(str::to_owned)
}

async fn envoy_version(settings: &Settings) -> String {
    match crate::envoy::process::query(&settings.envoy.binary, "--version").await {
        Ok(o) => parse_envoy_version(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            tracing::warn!("cannot tell Envoy's version: {e:#}");
            None
        }
    }
    .unwrap_or_else(|| "unknown".into())
}

/// How long the loop may go without a turn before `/healthz` calls it stuck: three polls plus the
/// longest step it can legitimately take (an apply waiting out a drain, with retries).
pub fn stuck_after(settings: &Settings) -> Duration {
    let v = &settings.vpsie;
    Duration::from_secs(
        3 * u64::from(v.poll_interval_s)
            + 3 * u64::from(v.request_timeout_s)
            + crate::envoy::VALIDATE_TIMEOUT.as_secs()
            + u64::from(settings.envoy.parent_shutdown_time_s)
            + 3 * u64::from(settings.supervisor.live_timeout_s)
            + 3 * u64::from(settings.supervisor.confirm_timeout_s)
            + 30,
    )
}

/// Serves `/metrics` (the agent's metrics and the supervisor's), `/healthz` (the loop turns) and
/// `/readyz` (a config is applied and Envoy is LIVE) on `listener`, a loopback address.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
    settings: Settings,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let socket = settings.supervisor.socket.clone();
    let stuck = stuck_after(&settings);
    let ha = settings.ha.clone();
    let metrics_route = {
        let socket = socket.clone();
        move || async move {
            if let Some(ha) = &ha {
                crate::ha::export(ha, &metrics);
            }
            let mut text = metrics.render();
            match crate::supervisor::protocol::call(
                &socket,
                &crate::supervisor::protocol::Request::Metrics,
                Duration::from_secs(2),
            )
            .await
            {
                Ok(crate::supervisor::protocol::Response::Metrics { text: sup }) => {
                    text.push_str(&sup)
                }
                _ => text.push_str("# the supervisor did not answer; its metrics are missing\n"),
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
    };
    let healthz = {
        let health = health.clone();
        move || async move {
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let age = now.saturating_sub(health.heartbeat.load(Ordering::Relaxed));
            if age <= stuck.as_secs() {
                (StatusCode::OK, "ok\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the loop has not turned for {age} s\n"),
                )
            }
        }
    };
    let readyz = move || async move {
        if !health.applied.load(Ordering::Relaxed) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "no config applied yet\n".to_owned(),
            );
        }
        match crate::supervisor::protocol::call(
            &socket,
            &crate::supervisor::protocol::Request::Status,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(crate::supervisor::protocol::Response::Status(s)) if s.envoy_state == "LIVE" => {
                (StatusCode::OK, "ready\n".to_owned())
            }
            Ok(crate::supervisor::protocol::Response::Status(s)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("envoy is {}\n", s.envoy_state),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the supervisor does not answer\n".to_owned(),
            ),
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    // Not axum::serve: it sets no time limits, so a client that opens connections and sends
    // nothing (or its request a byte at a time) would hold them, and their file descriptors, for
    // ever. Here each connection has METRICS_HEAD_TIMEOUT to send a request head and
    // METRICS_CONNECTION_LIFETIME in all, and at most METRICS_CONNECTIONS are served at once (the
    // scrape comes through Envoy, one connection at a time); more wait to be accepted.
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| anyhow::anyhow!("the metrics server stopped: {e}"))?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: let some close before trying again.
                tracing::warn!("the metrics server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEAD_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// Connections the metrics server serves at once.
pub const METRICS_CONNECTIONS: usize = 64;
/// How long a metrics connection has to send its request head.
pub const METRICS_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metrics connection may stay open in all.
pub const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the loop waits for.
enum Wake {
    Poll,
    Resync,
    /// A managed certificate or a pending challenge changed.
    Certificates,
    Events,
    Watchdog,
    Stop,
}

/// Tells systemd how the agent is doing (a no-op outside systemd).
fn notify_status(agent: &Agent) {
    let status = match (&agent.state.applied_hash, agent.state.epoch) {
        (Some(h), Some(e)) => format!("epoch {e}, config {}", &h[..h.len().min(12)]),
        _ => "no config applied yet".to_owned(),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
}

/// Runs the agent until `stop` resolves. `resync` yields on SIGHUP.
pub async fn run(
    mut agent: Agent,
    stop: impl Future<Output = ()>,
    mut resync: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let addr = (agent.settings.metrics.address, agent.settings.metrics.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("metrics.port: cannot listen on {}:{}: {e}", addr.0, addr.1)
    })?;
    let server = tokio::spawn(serve_metrics(
        listener,
        agent.metrics(),
        agent.health(),
        agent.settings.clone(),
    ));
    agent.started().await;
    agent.beat();
    let manager = tokio::spawn(acme::run(agent.certs.clone(), agent.settings.clone()));
    let certs_changed = agent.certs.changed.clone();
    tokio::pin!(stop);
    let interval = Duration::from_secs(agent.settings.vpsie.poll_interval_s.into());
    // The watchdog is pinged from the loop itself, so a stuck loop stops pinging.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut next_watchdog = watchdog.map(|d| Instant::now() + d);
    let mut next_poll = Instant::now();
    let mut ready = false;
    loop {
        let events_at = agent.next_event_attempt;
        let wake = tokio::select! {
            _ = &mut stop => Wake::Stop,
            _ = tokio::time::sleep_until(next_poll.into()) => Wake::Poll,
            Some(()) = resync.recv() => Wake::Resync,
            _ = certs_changed.notified() => Wake::Certificates,
            _ = sleep_until(events_at), if events_at.is_some() => Wake::Events,
            _ = sleep_until(next_watchdog), if next_watchdog.is_some() => Wake::Watchdog,
        };
        match wake {
            Wake::Stop => break,
            Wake::Poll | Wake::Resync => {
                let force = matches!(wake, Wake::Resync);
                let outcome = agent.cycle(force).await;
                tracing::debug!(?outcome, "cycle done");
                next_poll = Instant::now() + api::jitter(interval, 0.1);
                agent.flush_events().await;
                if !ready {
                    // READY once the first reconcile is done, whatever it found.
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    ready = true;
                }
                notify_status(&agent);
            }
            Wake::Certificates => {
                let outcome = agent.refresh().await;
                tracing::debug!(?outcome, "managed certificates changed");
                agent.flush_events().await;
                notify_status(&agent);
            }
            Wake::Events => {
                agent.flush_events().await;
            }
            Wake::Watchdog => {}
        }
        if let Some(d) = watchdog {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            next_watchdog = Some(Instant::now() + d);
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // The current step has finished; deliver what is queued, within a deadline.
    let _ = tokio::time::timeout(FLUSH_DEADLINE, async {
        while !agent.queue.is_empty() {
            if agent.flush_events().await == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    agent.save();
    manager.abort();
    server.abort();
    tracing::info!(queued = agent.queue.len(), "agent stopped");
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_versions() {
        let out = "\n/x/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_envoy_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(parse_envoy_version("garbage"), None);
    }

    #[test]
    fn a_refused_spec_keeps_its_identity_when_only_informational_fields_change() {
        let a = br#"{"error":false,"data":{"identifier":"x","traffic":1,"updated_on":"a","rules":[{"ruleId":"r","backends":[{"identifier":"b","status":"up"}]}]}}"#;
        let b = br#"{"data":{"rules":[{"backends":[{"status":"down","identifier":"b"}],"ruleId":"r"}],"updated_on":"b","identifier":"x","traffic":99},"error":false}"#;
        let c = br#"{"error":false,"data":{"identifier":"y","traffic":1,"rules":[]}}"#;
        assert_eq!(rejected_hash(a), rejected_hash(b));
        assert_ne!(rejected_hash(a), rejected_hash(c));
        assert_eq!(rejected_hash(b"not json").len(), 64);
    }
}
