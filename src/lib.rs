//! vpsie-lb-agent: the control-plane agent of the VPSie load balancer.
//!
//! The modules follow the data's path, each importing only from those listed before it
//! (`ARCHITECTURE.md`; `tests/it/layout.rs` checks there is no cycle):
//! - [`settings`]: the agent's own settings (`agent.yaml`), checked at start-up.
//! - [`backoff`]: doubling waits after failures, bounded.
//! - [`systemd`]: what the daemons tell systemd (ready, stopping, status, watchdog).
//! - [`net`]: what kind of place an IP address is, and where backends and the API may be.
//! - [`spec`]: parses, normalises, validates and hashes the load-balancer specification.
//! - [`render`]: turns a valid spec into an Envoy bootstrap (Tera templates, escaped, parsed back).
//! - [`store`]: private files written atomically; configs kept by hash.
//! - [`envoy`]: runs the Envoy binary: `--mode validate`, epochs, admin, hot-restart memory.
//! - [`events`]: the events reported to the API, with their ids, and their durable queue.
//! - [`metrics`]: the agent's and the supervisor's Prometheus metrics.
//! - [`resolve`]: backend host names → addresses the guard allows, TTL-cached.
//! - [`pipeline`]: load → resolve → hash → render, shared by every command and the agent.
//! - [`api`]: the VPSie API client, behind its address guard.
//! - [`acme`]: managed certificates: obtained and renewed by ACME (HTTP-01), kept on disk.
//! - [`supervisor`]: the parent of every Envoy epoch, its protocol and its client.
//! - [`ha`]: high availability with keepalived: its config, its health check, VRRP state.
//! - [`agent`]: the reconcile loop: poll the API, hand over to the supervisor, report.
//! - [`command`]: the command line: flags, one function per command, the exit codes.

pub mod acme;
pub mod agent;
pub mod api;
pub mod backoff;
pub mod command;
pub mod envoy;
pub mod events;
pub mod ha;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod render;
pub mod resolve;
pub mod settings;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod systemd;
