//! The parts of a rendered config the self-check reads back. Strings are borrowed and every
//! other field is skipped unparsed, so reading 10,000 endpoints back costs little; the top level
//! refuses unknown keys, so nothing can be added there either.

use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc<'a> {
    #[serde(borrow)]
    pub node: Node<'a>,
    #[serde(borrow)]
    pub admin: Admin<'a>,
    // Present so that the top level admits exactly these keys; their content is not checked.
    #[serde(rename = "stats_config")]
    pub _stats_config: serde::de::IgnoredAny,
    #[serde(rename = "overload_manager")]
    pub _overload_manager: serde::de::IgnoredAny,
    #[serde(borrow)]
    pub layered_runtime: Runtime<'a>,
    #[serde(borrow)]
    pub static_resources: Resources<'a>,
}
/// One static layer of numbers (the listeners' connection limits).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime<'a> {
    #[serde(borrow)]
    pub layers: Vec<Layer<'a>>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer<'a> {
    #[serde(rename = "name")]
    pub _name: serde::de::IgnoredAny,
    #[serde(borrow)]
    pub static_layer: std::collections::BTreeMap<Cow<'a, str>, u64>,
}
#[derive(Deserialize)]
pub struct Node<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
}
#[derive(Deserialize)]
pub struct Admin<'a> {
    #[serde(borrow)]
    pub address: Address<'a>,
}
/// A TCP address or a Unix socket (`pipe`), exactly one of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address<'a> {
    #[serde(borrow, default)]
    pub socket_address: Option<SocketAddress<'a>>,
    #[serde(borrow, default)]
    pub pipe: Option<Pipe<'a>>,
}
#[derive(Deserialize)]
pub struct Pipe<'a> {
    #[serde(borrow)]
    pub path: Cow<'a, str>,
}
impl Address<'_> {
    /// `ADDRESS:PORT` or `unix:PATH`, for comparing with what the view asked for.
    pub fn target(&self) -> Option<String> {
        match (&self.socket_address, &self.pipe) {
            (Some(sa), None) => Some(format!("{}:{}", sa.address, sa.port_value)),
            (None, Some(p)) => Some(format!("unix:{}", p.path)),
            _ => None,
        }
    }
}
#[derive(Deserialize)]
pub struct SocketAddress<'a> {
    #[serde(borrow)]
    pub address: Cow<'a, str>,
    pub port_value: u16,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources<'a> {
    #[serde(borrow)]
    pub listeners: Vec<Listener<'a>>,
    #[serde(borrow)]
    pub clusters: Vec<Cluster<'a>>,
}
#[derive(Deserialize)]
pub struct Listener<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub address: Address<'a>,
    #[serde(borrow, default)]
    pub additional_addresses: Vec<AdditionalAddress<'a>>,
    pub filter_chains: Vec<serde::de::IgnoredAny>,
}
#[derive(Deserialize)]
pub struct AdditionalAddress<'a> {
    #[serde(borrow)]
    pub address: Address<'a>,
}
impl Listener<'_> {
    /// Every `ADDRESS:PORT` it binds, its own address first.
    pub fn targets(&self) -> Vec<Option<String>> {
        std::iter::once(&self.address)
            .chain(self.additional_addresses.iter().map(|a| &a.address))
            .map(Address::target)
            .collect()
    }
}
#[derive(Deserialize)]
pub struct Cluster<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub load_assignment: LoadAssignment<'a>,
}
#[derive(Deserialize)]
pub struct LoadAssignment<'a> {
    #[serde(borrow)]
    pub endpoints: Vec<Locality<'a>>,
}
#[derive(Deserialize)]
pub struct Locality<'a> {
    #[serde(borrow)]
    pub lb_endpoints: Vec<LbEndpoint<'a>>,
}
#[derive(Deserialize)]
pub struct LbEndpoint<'a> {
    #[serde(borrow)]
    pub endpoint: Endpoint<'a>,
}
#[derive(Deserialize)]
pub struct Endpoint<'a> {
    #[serde(borrow)]
    pub address: Address<'a>,
}
