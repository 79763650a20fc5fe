//! Endpoint lists: what a `ClusterLoadAssignment` holds, the binary form Envoy is given, and
//! the union a pool that moves is written as (the supervisor's transitions).
//!
//! Envoy reads an xDS file by its name: `.pb` as binary protobuf, anything else as JSON, which
//! it parses through protobuf's JSON parser. Endpoint lists are the only files that grow with
//! the backends, and for them that parse was most of Envoy's work: one weight changed in a pool
//! of 10,000 took Envoy 72 ms from a JSON file and 24 ms from a binary one (1,000: 8.2 against
//! 2.8 ms). So they are binary. The messages here are the part of Envoy's protos the renderer
//! writes (`envoy/config/endpoint/v3/endpoint*.proto`, `core/v3/address.proto`, and the
//! discovery response around them, field numbers as there); the rendered JSON is read into them
//! with unknown fields refused, so nothing the renderer wrote can be dropped on the way.

use prost::Message;
use serde::Deserialize;

/// `envoy.config.endpoint.v3.ClusterLoadAssignment`, as rendered.
#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    #[prost(message, optional, tag = "1")]
    pub endpoint: Option<Endpoint>,
    #[prost(message, optional, tag = "4")]
    pub load_balancing_weight: Option<UInt32Value>,
}

#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

/// `google.protobuf.UInt32Value`: a bare number in JSON.
#[derive(Clone, PartialEq, Eq, Message, Deserialize)]
#[serde(transparent)]
pub struct UInt32Value {
    #[prost(uint32, tag = "1")]
    pub value: u32,
}

/// `envoy.service.discovery.v3.DiscoveryResponse`: what an xDS file holds.
#[derive(Clone, PartialEq, Message)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Any>,
    #[prost(string, tag = "4")]
    pub type_url: String,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

impl ClusterLoadAssignment {
    /// Each endpoint as (address, port, weight), in order (weight 1 when none is given, as
    /// Envoy takes it).
    pub fn list(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|le| {
                let sa = le
                    .endpoint
                    .as_ref()?
                    .address
                    .as_ref()?
                    .socket_address
                    .as_ref()?;
                let w = le.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                Some((sa.address.as_str(), sa.port_value, w))
            })
    }

    /// This list with every endpoint of `old` it does not have (a host is its address and
    /// port) added as it was, after its own.
    pub fn union(mut self, old: &ClusterLoadAssignment) -> ClusterLoadAssignment {
        let have: std::collections::HashSet<(String, u32)> =
            self.list().map(|(a, p, _)| (a.to_owned(), p)).collect();
        let extra: Vec<LbEndpoint> = old
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter(|le| {
                le.endpoint
                    .as_ref()
                    .and_then(|e| e.address.as_ref())
                    .and_then(|a| a.socket_address.as_ref())
                    .is_some_and(|sa| !have.contains(&(sa.address.clone(), sa.port_value)))
            })
            .cloned()
            .collect();
        match self.endpoints.first_mut() {
            Some(l) => l.lb_endpoints.extend(extra),
            None => self.endpoints.push(LocalityLbEndpoints {
                lb_endpoints: extra,
            }),
        }
        self
    }
}

/// One cluster's endpoint list, held as the encoded `ClusterLoadAssignment` Envoy is given:
/// ~27 bytes a backend (the JSON text took ~110, the parsed value ten times that), and only a
/// pool that moves needs the structure (decoded then, that pool alone). Equal lists are equal
/// bytes: prost writes fields in tag order and lists in their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(Vec<u8>);

impl EndpointList {
    pub fn new(la: &ClusterLoadAssignment) -> EndpointList {
        EndpointList(la.encode_to_vec())
    }

    /// A rendered `load_assignment`, as text; an error names what does not fit (an unknown
    /// field, a value of the wrong type).
    pub fn from_json(la: &str) -> Result<EndpointList, String> {
        serde_json::from_str::<ClusterLoadAssignment>(la)
            .map(|la| EndpointList::new(&la))
            .map_err(|e| e.to_string())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The list decoded. It was encoded here, so it decodes; an empty list if it ever did not.
    pub fn assignment(&self) -> ClusterLoadAssignment {
        ClusterLoadAssignment::decode(self.0.as_slice()).unwrap_or_default()
    }
}
