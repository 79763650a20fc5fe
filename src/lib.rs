//! vpsie-lb-agent: the control-plane agent of the VPSie load balancer.
//!
//! The modules follow the data's path (see `ARCHITECTURE.md`):
//! - [`settings`]: the agent's own settings (`agent.yaml`), checked at start-up.
//! - [`spec`]: parses, normalises, validates and hashes the load-balancer specification.
//! - [`render`]: turns a valid spec into an Envoy bootstrap (Tera templates, escaped, parsed back).
//! - [`envoy`]: runs the Envoy binary (`--mode validate` now; supervision comes with issue 3).

pub mod agent;
pub mod api;
pub mod command;
pub mod envoy;
pub mod events;
pub mod metrics;
pub mod pipeline;
pub mod render;
pub mod settings;
pub mod spec;
pub mod store;
pub mod supervisor;
