//! One integration-test binary (one link, shared helpers), a module per concern.
//! Tests that need Envoy use the real binary (`make envoy`) and fail when it is missing.

mod support;

mod access_log;
mod admin_socket;
mod agent;
mod api_sim;
mod demo;
mod docs;
mod dying;
mod edge;
mod envoy_validate;
mod families;
mod faults;
mod fuzz_replay;
mod grpc;
mod ha;
mod hostile;
mod layout;
mod live;
mod managed;
mod observability;
mod packaging;
mod pool_health;
mod proptest_specs;
mod real_shape;
mod sources;
mod splice;
mod supervision;
mod tickets;
mod traffic;
mod validation;
