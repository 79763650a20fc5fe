//! Splits a rendered config into what needs a process (the bootstrap) and what the running Envoy
//! takes live through file-based xDS (listeners, routes, clusters, endpoints, secrets).
//!
//! The templates render one complete static config: it is what `envoy --mode validate` checks
//! (validate reads no xDS files) and what is stored by hash. This module moves its parts into
//! xDS resources mechanically: no value is re-rendered, so the escaping and the read-back check
//! of the templates still hold for every byte. Pure: no I/O; the caller writes the files.
//!
//! - Listeners (all but the metrics one) go to LDS. Each HTTP connection manager's inline route
//!   table goes to RDS, so a route edit never drains a listener.
//! - Clusters (all but the two metrics ones) go to CDS as `EDS` clusters; their endpoints go to
//!   one EDS file each, so an endpoint change never rebuilds a connection pool.
//! - Certificates go to SDS, named by the certificate's id and holding the PEM inline: a
//!   rotation changes the secret, not the listener, and drains nothing.
//! - Every TLS listener takes its session-ticket keys from one more SDS secret
//!   ([`TICKET_SECRET`]), which the supervisor writes and rotates ([`tickets_file`]): not part of
//!   the config, so a rotation is never a new config.

use crate::settings::{AccessLogMode, AccessLogSettings};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

/// Listeners and clusters that stay in the bootstrap: the scrape port and where it forwards.
fn is_static_listener(name: &str) -> bool {
    name.starts_with("metrics:")
}
fn is_static_cluster(name: &str) -> bool {
    name == "admin:metrics" || name == "agent:metrics"
}

/// A config split for live apply. Resources are keyed by name; every resource's config source
/// points into `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Xds {
    /// The bootstrap without `dynamic_resources` (see [`Xds::bootstrap`]).
    pub base: Value,
    /// SHA-256 of `base`: two configs with the same key can be applied live one over the other.
    pub bootstrap_key: String,
    pub dir: PathBuf,
    pub listeners: BTreeMap<String, Value>,
    pub routes: BTreeMap<String, Value>,
    pub clusters: BTreeMap<String, Value>,
    /// By cluster name.
    pub endpoints: BTreeMap<String, EndpointList>,
    pub secrets: BTreeMap<String, Value>,
    /// Whether a listener terminates TLS (and so reads [`TICKETS_FILE`]).
    pub tickets: bool,
    /// Runtime keys the config sets (each listener's connection limit): the rendered config's
    /// static runtime layer, moved into the RTDS layer so that they change live.
    pub runtime: BTreeMap<String, Value>,
}

/// One xDS file as written: its name in the directory, version and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub version: String,
    pub data: Vec<u8>,
}

/// The kinds of xDS resource, each with its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    Endpoints,
    Route,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Secret => "sds",
            Kind::Endpoints => "eds",
            Kind::Route => "rds",
        }
    }
}

/// The file of one named resource (routes, endpoints, secrets): hex of the name, so any name
/// Envoy accepts is a safe file name. Envoy picks the parser by the extension: endpoint lists
/// are binary protobuf (`.pb`, see [`endpoints`]), everything else JSON. (Envoy reads a `.pb`
/// that does not parse as an empty update, not an error: the supervisor counts one as refused.)
pub fn file_name(kind: Kind, name: &str) -> String {
    let ext = match kind {
        Kind::Endpoints => "pb",
        Kind::Secret | Kind::Route => "json",
    };
    format!("{}-{}.{ext}", kind.prefix(), hex::encode(name.as_bytes()))
}

pub const LDS_FILE: &str = "lds.json";
pub const CDS_FILE: &str = "cds.json";
/// The runtime layer (RTDS) the supervisor writes from its own settings: what the access log
/// filters read, so that `access_log.mode` and `sample_percent` change without a listener update.
pub const RUNTIME_FILE: &str = "runtime.json";
const RUNTIME_LAYER: &str = "vpsie_lb";
/// The session-ticket keys every TLS listener encrypts and decrypts tickets with (SDS).
pub const TICKETS_FILE: &str = "tickets.json";
/// Their secret's name: a colon, which no certificate id holds, so it names no certificate.
pub const TICKET_SECRET: &str = "vpsie-lb:session-ticket-keys";

/// The tickets file for `keys`: the first encrypts new tickets, every one decrypts (Envoy's
/// `TlsSessionTicketKeys`; 80 bytes each).
pub fn tickets_file(keys: &[[u8; 80]]) -> File {
    use base64::Engine;
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"inline_bytes": base64::engine::general_purpose::STANDARD.encode(k)}))
        .collect();
    let secret = json!({"name": TICKET_SECRET, "session_ticket_keys": {"keys": keys}});
    discovery_file(TICKETS_FILE.into(), SECRET, &[&secret])
}

/// The runtime file for these access log settings and the config's own keys (`from_config`:
/// [`Xds::runtime`]).
pub fn runtime_file(a: &AccessLogSettings, from_config: &BTreeMap<String, Value>) -> File {
    let enabled = match a.mode {
        AccessLogMode::File => 100,
        AccessLogMode::Off => 0,
    };
    let mut layer = Map::new();
    // Dotted keys at the top of the layer are runtime keys as they are.
    for (k, v) in from_config {
        layer.insert(k.clone(), v.clone());
    }
    layer.insert(
        "vpsie_lb".into(),
        json!({"access_log": {
            "enabled": enabled,
            "sample": a.sample_per_ten_thousand(),
        }}),
    );
    let layer = json!({"name": RUNTIME_LAYER, "layer": layer});
    discovery_file(RUNTIME_FILE.into(), RUNTIME, &[&layer])
}

fn source(dir: &Path, file: &str) -> Value {
    json!({
        "resource_api_version": "V3",
        "path_config_source": {"path": dir.join(file).to_string_lossy()}
    })
}

/// A `DiscoveryResponse` holding `resources` of one type; its version is a digest of them, so
/// the same resources always make the same file.
///
/// Written straight from each resource rather than from typed copies (at 1,000 endpoints the
/// copies and a second serialisation were milliseconds of every live apply). The bytes are the
/// same: object keys serialise sorted, and `@type` sorts before every field name.
pub fn discovery_file(name: String, type_url: &str, resources: &[&Value]) -> File {
    let head = format!("{{\"@type\":{}", Value::String(type_url.into()));
    let mut body = String::from("[");
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&head);
        let text = match r {
            Value::Object(_) => r.to_string(),
            _ => String::new(),
        };
        match text.strip_prefix('{') {
            Some(fields) if fields != "}" => {
                body.push(',');
                body.push_str(fields);
            }
            _ => body.push('}'),
        }
    }
    body.push(']');
    let version = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
    let data = format!("{{\"resources\":{body},\"version_info\":\"{version}\"}}").into_bytes();
    File {
        name,
        version,
        data,
    }
}

/// The EDS file of cluster `name`: a binary `DiscoveryResponse` holding the list, versioned
/// by a digest of it (the same list, the same file).
pub fn endpoints_file(name: &str, la: &EndpointList) -> File {
    use prost::Message;
    let version = hex::encode(&Sha256::digest(la.bytes())[..8]);
    let data = endpoints::DiscoveryResponse {
        version_info: version.clone(),
        resources: vec![endpoints::Any {
            type_url: ENDPOINTS.into(),
            value: la.bytes().to_vec(),
        }],
        type_url: ENDPOINTS.into(),
    }
    .encode_to_vec();
    File {
        name: file_name(Kind::Endpoints, name),
        version,
        data,
    }
}

impl Xds {
    /// The ports every listener of the config listens on, the static ones (metrics) included.
    pub fn listener_ports(&self) -> Vec<u16> {
        let statics = self.base["static_resources"]["listeners"].as_array();
        self.listeners
            .values()
            .chain(statics.into_iter().flatten())
            .filter_map(|l| l["address"]["socket_address"]["port_value"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    }

    /// The bootstrap an epoch starts from: the static part plus LDS and CDS from `dir`.
    pub fn bootstrap(&self) -> String {
        let mut b = self.base.clone();
        if let Value::Object(o) = &mut b {
            o.insert(
                "dynamic_resources".into(),
                json!({
                    "lds_config": source(&self.dir, LDS_FILE),
                    "cds_config": source(&self.dir, CDS_FILE),
                }),
            );
            // The RTDS layer first, then the admin layer (`/runtime_modify`, for an operator).
            o.insert(
                "layered_runtime".into(),
                json!({"layers": [
                    {"name": "rtds", "rtds_layer": {
                        "name": RUNTIME_LAYER,
                        "rtds_config": source(&self.dir, RUNTIME_FILE),
                    }},
                    {"name": "admin", "admin_layer": {}},
                ]}),
            );
        }
        b.to_string()
    }

    /// The LDS file for these listeners.
    pub fn lds(&self) -> File {
        let ls: Vec<&Value> = self.listeners.values().collect();
        discovery_file(LDS_FILE.into(), LISTENER, &ls)
    }

    /// The CDS file for these clusters plus `extra` (kept while listeners still use them);
    /// `moved` names the clusters that are a moved pool's new object ([`Moved`]).
    pub fn cds(&self, extra: &BTreeMap<String, Value>, moved: &BTreeMap<String, Moved>) -> File {
        let moved: BTreeMap<&String, Value> = moved
            .iter()
            .filter_map(|(name, m)| {
                let mut c = self.clusters.get(name).or_else(|| extra.get(name))?.clone();
                moved::point(&mut c, m, &self.dir)?;
                Some((name, c))
            })
            .collect();
        let mut all: BTreeMap<&String, &Value> = self.clusters.iter().collect();
        for (k, v) in extra {
            all.entry(k).or_insert(v);
        }
        for (k, v) in &moved {
            all.insert(k, v);
        }
        let cs: Vec<&Value> = all.into_values().collect();
        discovery_file(CDS_FILE.into(), CLUSTER, &cs)
    }

    /// One file per named resource of this kind.
    pub fn named_files(&self, kind: Kind) -> BTreeMap<String, File> {
        let (map, type_url) = match kind {
            Kind::Secret => (&self.secrets, SECRET),
            Kind::Endpoints => {
                return self
                    .endpoints
                    .iter()
                    .map(|(name, la)| (name.clone(), endpoints_file(name, la)))
                    .collect()
            }
            Kind::Route => (&self.routes, ROUTE),
        };
        map.iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    discovery_file(file_name(kind, name), type_url, &[r]),
                )
            })
            .collect()
    }

    /// The names of [`Xds::all_files`], without writing any file's contents.
    pub fn file_names(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> = [LDS_FILE, CDS_FILE]
            .into_iter()
            .map(str::to_owned)
            .collect();
        for (kind, map) in [(Kind::Secret, &self.secrets), (Kind::Route, &self.routes)] {
            out.extend(map.keys().map(|n| file_name(kind, n)));
        }
        out.extend(self.endpoints.keys().map(|n| file_name(Kind::Endpoints, n)));
        out
    }

    /// Every file of this config, for a new epoch's directory.
    pub fn all_files(&self) -> Vec<File> {
        let mut out = Vec::new();
        for kind in [Kind::Secret, Kind::Endpoints, Kind::Route] {
            out.extend(self.named_files(kind).into_values());
        }
        out.push(self.cds(&BTreeMap::new(), &BTreeMap::new()));
        out.push(self.lds());
        out
    }
}

/// Splits a rendered config (the templates' static bootstrap) for live apply from `dir`.
/// `files` are the certificate files it names (path, contents): their PEM goes into the secrets.
/// The document is read in one pass ([`pieces`]): endpoint lists never become JSON values.
pub fn split(config: &str, files: &[(PathBuf, String)], dir: &Path) -> Result<Xds, String> {
    let Pieces(mut root, statics) =
        serde_json::from_str(config).map_err(|e| format!("the config does not parse: {e}"))?;
    let runtime = static_runtime(root.remove("layered_runtime"))?;
    let Statics {
        other: mut statics,
        listeners,
        clusters,
    } = statics.ok_or("static_resources is missing")?;
    let mut xds = Xds {
        base: Value::Null,
        bootstrap_key: String::new(),
        dir: dir.to_path_buf(),
        listeners: BTreeMap::new(),
        routes: BTreeMap::new(),
        clusters: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        secrets: BTreeMap::new(),
        tickets: false,
        runtime,
    };
    let mut static_listeners = Vec::new();
    for mut l in listeners {
        let name = name_of(&l)?;
        if is_static_listener(&name) {
            static_listeners.push(l);
            continue;
        }
        move_out_routes_and_secrets(&mut l, &mut xds, files)?;
        if xds.listeners.insert(name.clone(), l).is_some() {
            return Err(format!("listener {name} appears twice"));
        }
    }
    let mut static_clusters = Vec::new();
    for ClusterIn(mut o, la) in clusters {
        let name = name_in(&o)?;
        if is_static_cluster(&name) {
            if let Some(la) = la {
                let la = serde_json::from_str(la.get())
                    .map_err(|e| format!("cluster {name}'s load_assignment: {e}"))?;
                o.insert("load_assignment".into(), la);
            }
            static_clusters.push(Value::Object(o));
            continue;
        }
        let la = la.ok_or_else(|| format!("cluster {name} has no load_assignment"))?;
        let list = EndpointList::from_json(la.get())
            .map_err(|e| format!("cluster {name}'s load_assignment: {e}"))?;
        o.insert("type".into(), Value::String("EDS".into()));
        o.insert(
            "eds_cluster_config".into(),
            json!({
                "service_name": name,
                "eds_config": source(dir, &file_name(Kind::Endpoints, &name)),
            }),
        );
        xds.endpoints.insert(name.clone(), list);
        if xds
            .clusters
            .insert(name.clone(), Value::Object(o))
            .is_some()
        {
            return Err(format!("cluster {name} appears twice"));
        }
    }
    statics.insert("listeners".into(), Value::Array(static_listeners));
    statics.insert("clusters".into(), Value::Array(static_clusters));
    root.insert("static_resources".into(), Value::Object(statics));
    if root.contains_key("dynamic_resources") {
        return Err("the config already has dynamic_resources".into());
    }
    let doc = Value::Object(root);
    xds.bootstrap_key = hex::encode(Sha256::digest(doc.to_string().as_bytes()));
    xds.base = doc;
    Ok(xds)
}

/// The keys of the rendered config's one static runtime layer (none when it has no runtime).
fn static_runtime(runtime: Option<Value>) -> Result<BTreeMap<String, Value>, String> {
    let Some(runtime) = runtime else {
        return Ok(BTreeMap::new());
    };
    match runtime
        .get("layers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([layer]) => match layer.get("static_layer") {
            Some(Value::Object(o)) => Ok(o.clone().into_iter().collect()),
            _ => Err("the runtime layer is not a static layer".into()),
        },
        _ => Err("layered_runtime must hold exactly one layer".into()),
    }
}

fn name_of(v: &Value) -> Result<String, String> {
    v.as_object()
        .map_or_else(|| Err("a resource has no name".to_owned()), name_in)
}

fn name_in(fields: &Map<String, Value>) -> Result<String, String> {
    fields
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "a resource has no name".to_owned())
}

/// In one listener: inline route tables become RDS references, certificate files SDS ones.
fn move_out_routes_and_secrets(
    l: &mut Value,
    xds: &mut Xds,
    files: &[(PathBuf, String)],
) -> Result<(), String> {
    let Some(chains) = l.get_mut("filter_chains").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for chain in chains {
        if let Some(tls) = chain
            .pointer_mut("/transport_socket/typed_config")
            .and_then(Value::as_object_mut)
        {
            // Tickets a client got before a hot restart, a certificate rotation or on the
            // other HA node still decrypt: the keys are the supervisor's, not each context's.
            tls.insert(
                "session_ticket_keys_sds_secret_config".into(),
                json!({"name": TICKET_SECRET, "sds_config": source(&xds.dir, TICKETS_FILE)}),
            );
            xds.tickets = true;
            let ctx = tls
                .get_mut("common_tls_context")
                .and_then(Value::as_object_mut);
            if let Some(Value::Array(certs)) = ctx.and_then(|c| c.remove("tls_certificates")) {
                let mut refs = Vec::new();
                for cert in certs {
                    let name = secret(&cert, files, xds)?;
                    refs.push(json!({
                        "name": name,
                        "sds_config": source(&xds.dir, &file_name(Kind::Secret, &name)),
                    }));
                }
                if let Some(ctx) = tls
                    .get_mut("common_tls_context")
                    .and_then(Value::as_object_mut)
                {
                    ctx.insert(
                        "tls_certificate_sds_secret_configs".into(),
                        Value::Array(refs),
                    );
                }
            }
        }
        let Some(filters) = chain.get_mut("filters").and_then(Value::as_array_mut) else {
            continue;
        };
        for f in filters {
            let Some(hcm) = f.get_mut("typed_config").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(rc) = hcm.remove("route_config") else {
                continue;
            };
            let name = name_of(&rc)?;
            match xds.routes.get(&name) {
                Some(existing) if existing != &rc => {
                    return Err(format!("route table {name} differs between filter chains"))
                }
                _ => {
                    xds.routes.insert(name.clone(), rc);
                }
            }
            hcm.insert(
                "rds".into(),
                json!({
                    "route_config_name": name,
                    "config_source": source(&xds.dir, &file_name(Kind::Route, &name)),
                }),
            );
        }
    }
    Ok(())
}

/// The secret for one `tls_certificates` entry: named by the certificate's id (its file is
/// `<id>-<content tag>.crt`), PEM inline. Returns its name.
fn secret(cert: &Value, files: &[(PathBuf, String)], xds: &mut Xds) -> Result<String, String> {
    let path = |key: &str| {
        cert.pointer(&format!("/{key}/filename"))
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .ok_or_else(|| format!("a certificate has no {key} file"))
    };
    let (chain, key) = (path("certificate_chain")?, path("private_key")?);
    let contents = |p: &Path| {
        files
            .iter()
            .find(|(fp, _)| fp == p)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| format!("{} is named but not given", p.display()))
    };
    let stem = chain
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("a certificate file has no name")?;
    // `<id>-<16 hex digits>`: the id alone names the secret, so a rotation keeps the name.
    let name = match stem.rsplit_once('-') {
        Some((id, tag)) if tag.len() == 16 => id.to_owned(),
        _ => stem.to_owned(),
    };
    let value = |name: &str| -> Result<Value, String> {
        Ok(json!({
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": contents(&chain)?},
                "private_key": {"inline_string": contents(&key)?},
            }
        }))
    };
    let mut v = value(&name)?;
    // Two rules may name one certificate id with different material: the second is then
    // named by its content too, so neither replaces the other.
    let name = match xds.secrets.get(&name) {
        Some(existing) if existing != &v => {
            v = value(stem)?;
            stem.to_owned()
        }
        _ => name,
    };
    xds.secrets.insert(name.clone(), v);
    Ok(name)
}

pub mod endpoints;
mod moved;
mod pieces;
#[cfg(test)]
mod tests;

pub use endpoints::{ClusterLoadAssignment, EndpointList};
pub use moved::{warm_file_name, Moved};
use pieces::{ClusterIn, Pieces, Statics};
