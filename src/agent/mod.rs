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
//! Signals (mapped in `command`): TERM and INT finish the current step, flush events within a
//! deadline and exit 0; HUP resyncs at once and re-applies even an unchanged hash.

use crate::acme;
use crate::api::{ApiClient, Fetched};
use crate::envoy::admin::EnvoyState;
use crate::events::{Event, EventQueue};
use crate::metrics::{self, AgentMetrics, Poll};
use crate::pipeline;
use crate::render;
use crate::resolve::{self, Resolved, Resolver};
use crate::settings::Settings;
use crate::spec;
use crate::store;
use crate::supervisor::client;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

mod http;
mod outcome;
mod run;
mod state;

pub use http::{
    serve_metrics, stuck_after, Health, METRICS_CONNECTIONS, METRICS_CONNECTION_LIFETIME,
    METRICS_HEAD_TIMEOUT,
};
pub use outcome::Outcome;
use run::envoy_version;
pub use run::{parse_envoy_version, run};
pub use state::{rejected_hash, AgentState, PollRecord};

/// Events kept while the API is away; the oldest go first.
pub const QUEUE_CAPACITY: usize = 1000;
/// How long a stopping agent keeps trying to deliver queued events.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
const MAX_EVENT_BACKOFF: Duration = Duration::from_secs(60);

pub struct Agent {
    settings: Settings,
    api: ApiClient,
    queue: EventQueue,
    state: AgentState,
    event_backoff: crate::backoff::Backoff,
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
            event_backoff: crate::backoff::Backoff::new(Duration::from_secs(1), MAX_EVENT_BACKOFF),
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
                    resolve::Problem::Refused { .. } => metrics::BackendProblem::Refused,
                    resolve::Problem::Unresolved { .. } => metrics::BackendProblem::Unresolved,
                };
                self.metrics.backend_problems.inc(kind);
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
        // What the poll kept says it best: an unchanged outcome after a 304 is "not modified".
        let not_modified = self
            .state
            .last_poll_result
            .as_ref()
            .is_some_and(|r| r.result == Poll::NotModified);
        let result = match outcome.poll_record().result {
            Poll::Unchanged if not_modified => Poll::NotModified,
            r => r,
        };
        self.metrics.polls.inc(result);
        if let Ok(s) = client::status(&self.settings).await {
            self.report_stuck_transitions(&s);
            self.metrics
                .envoy_up
                .set(i64::from(s.envoy_state == EnvoyState::Live));
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
            self.state.last_poll_result = Some(outcome.poll_record());
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
            self.metrics.acme_attempts.inc(match e.kind {
                crate::events::EventKind::CertificateIssued => metrics::Acme::Issued,
                crate::events::EventKind::CertificateRenewed => metrics::Acme::Renewed,
                _ => metrics::Acme::Failed,
            });
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
            .observe(metrics::ApiOp::Fetch, started.elapsed().as_secs_f64());
        self.state.last_poll = Some(now_str());
        let body = match fetched {
            Err(e) => {
                tracing::warn!("poll failed, the running config keeps serving: {e}");
                self.state.last_poll_result =
                    Some(PollRecord::new(Poll::Unreachable, Some(e.to_string())));
                self.save();
                return Outcome::Unreachable(e.to_string());
            }
            Ok(Fetched::NotModified) => {
                self.state.last_poll_result = Some(PollRecord::new(Poll::NotModified, None));
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
                            self.state.last_poll_result = Some(outcome.poll_record());
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
        self.state.last_poll_result = Some(outcome.poll_record());
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
                if self.state.rejected.as_ref() != Some(&body_hash) {
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
        if !force && self.state.applied_hash.as_ref() == Some(&hash) {
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
                    render::splice::How::Full => metrics::Render::Full,
                    render::splice::How::Spliced { changed } => {
                        tracing::debug!(changed, "endpoint-only change: endpoint lists rewritten");
                        metrics::Render::Spliced
                    }
                };
                self.metrics.renders.inc(label);
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
}
