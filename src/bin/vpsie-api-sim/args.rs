//! The command line, in two stages: [`Args`] is what the user typed (clap, no I/O, addresses
//! already judged loopback or not), [`Config`] is the checked result (token read, spec files
//! found, names unique). Nothing here binds a socket: a refused address never reaches `bind`.

use anyhow::{bail, Context};
use clap::Parser;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

const ABOUT: &str = "DEVELOPMENT TOOL, not the real API: a local stand-in for the VPSie \
load-balancer API, for tests and demos of vpsie-lb-agent. Listens on loopback only.";

const LONG_ABOUT: &str = "DEVELOPMENT TOOL, not the real API: a local stand-in for the VPSie \
load-balancer API (contract: docs/contract.md), for tests and demos of vpsie-lb-agent. \
It listens on loopback only and prints one line to stdout once it is listening.

API (every request needs the header `Vpsie-Auth: <token>`):
  GET  /api/v1/lb/{id}          the spec file of --lb ID, read fresh on every request, in the
                                envelope, with an ETag (If-None-Match: 304)
  POST /api/v1/lb/{id}/events   records {id, type, message, timestamp, metadata}; 201 {seq};
                                an id recorded before is not recorded again: 200 {seq, duplicate}

Control (token required too):
  GET|DELETE /sim/events?lb=ID  list (in arrival order) or clear the recorded events
  GET|POST|DELETE /sim/faults   list, queue or clear faults. POST {\"kind\": K, \"count\": N,
                                \"delay_ms\": M}: the next N API requests get fault K, one of
                                status_500, status_429, delay, error_envelope, oversize, drop,
                                or delay_after_record (event posts only: recorded, then answered
                                after delay_ms). Faults queue up in order; a fault answers before
                                the token is checked, and an event posted while one answers is
                                not recorded.

Signals: TERM stops gracefully (requests in flight finish, 5 s at most); INT stops at once.
Exit codes: 0 stopped by a signal, 1 failure (message says what), 2 bad command line.";

#[derive(Parser, Debug)]
#[command(name = "vpsie-api-sim", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Where to serve the API: a loopback address (127.0.0.0/8 or ::1); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", value_parser = loopback_addr)]
    pub listen: SocketAddr,

    /// File holding the API token clients must send as `Vpsie-Auth` (whitespace trimmed).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,

    /// A load balancer: its identifier and the JSON file served as its spec (repeatable).
    #[arg(long = "lb", value_name = "ID=PATH", value_parser = lb_arg, required = true)]
    pub lbs: Vec<(String, PathBuf)>,

    /// An HTTP backend on a loopback address answering every request with 200 and body NAME
    /// (and header `x-backend: NAME`) (repeatable).
    #[arg(long = "upstream", value_name = "NAME=ADDR", value_parser = upstream_arg)]
    pub upstreams: Vec<(String, SocketAddr)>,

    /// A TCP backend on a loopback address writing NAME to each connection, then closing it
    /// (repeatable).
    #[arg(long = "tcp-upstream", value_name = "NAME=ADDR", value_parser = upstream_arg)]
    pub tcp_upstreams: Vec<(String, SocketAddr)>,

    /// Also append every recorded event to this file, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
}

/// The checked configuration the server runs with.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub token: String,
    /// Load-balancer id → spec file. Sorted, so the start-up log lists them in a stable order.
    pub lbs: BTreeMap<String, PathBuf>,
    pub upstreams: Vec<(String, SocketAddr)>,
    pub tcp_upstreams: Vec<(String, SocketAddr)>,
    pub events_file: Option<PathBuf>,
}

impl Config {
    /// Reads the token and checks the spec files: fail at start rather than on the first request.
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let raw = std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("cannot read the token file {}", args.token_file.display()))?;
        let token = raw.trim().to_owned();
        if token.is_empty() {
            bail!(
                "the token file {} is empty: write the token clients must send as Vpsie-Auth",
                args.token_file.display()
            );
        }
        let mut lbs = BTreeMap::new();
        for (id, path) in args.lbs {
            if !path.is_file() {
                bail!(
                    "--lb {id}={}: no such file (give the JSON file to serve as the spec)",
                    path.display()
                );
            }
            if lbs.insert(id.clone(), path).is_some() {
                bail!("--lb {id} is given twice: each load balancer needs one spec file");
            }
        }
        let mut addrs = HashSet::new();
        addrs.insert(args.listen);
        for (name, addr) in args.upstreams.iter().chain(&args.tcp_upstreams) {
            if addr.port() != 0 && !addrs.insert(*addr) {
                bail!("upstream {name}: address {addr} is used twice");
            }
        }
        Ok(Config {
            listen: args.listen,
            token,
            lbs,
            upstreams: args.upstreams,
            tcp_upstreams: args.tcp_upstreams,
            events_file: args.events_file,
        })
    }
}

/// Loopback only: this is a development tool with a well-known token in a file, and it must not
/// be reachable from anywhere but this machine.
fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|e| format!("{e} (expected IP:PORT, e.g. 127.0.0.1:8088)"))?;
    if !is_loopback(addr.ip()) {
        return Err(format!(
            "{} is not a loopback address; vpsie-api-sim is a development tool and listens on \
             127.0.0.0/8 or ::1 only",
            addr.ip()
        ));
    }
    Ok(addr)
}

fn is_loopback(ip: IpAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too; `to_canonical` turns it into the IPv4 address.
    ip.to_canonical().is_loopback()
}

fn split_pair(s: &str, what: &str) -> Result<(String, String), String> {
    let (left, right) = s
        .split_once('=')
        .ok_or_else(|| format!("expected {what}, got {s:?}"))?;
    Ok((left.to_owned(), right.to_owned()))
}

/// Ids follow the contract's pattern for `identifier`, so the sim refuses what the API would.
fn lb_arg(s: &str) -> Result<(String, PathBuf), String> {
    let (id, path) = split_pair(s, "ID=PATH")?;
    if !valid_name(&id, 64, false) {
        return Err(format!(
            "load-balancer id {id:?} must match ^[a-zA-Z0-9_-]{{1,64}}$"
        ));
    }
    if path.is_empty() {
        return Err(format!("--lb {id}= needs a file path"));
    }
    Ok((id, PathBuf::from(path)))
}

/// Names become a response body and a header value, so they stay plain.
fn upstream_arg(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = split_pair(s, "NAME=ADDR")?;
    if !valid_name(&name, 64, true) {
        return Err(format!(
            "upstream name {name:?} must match ^[a-zA-Z0-9_.-]{{1,64}}$"
        ));
    }
    let addr = loopback_addr(&addr)?;
    Ok((name, addr))
}

fn valid_name(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (dots && b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in [
            "127.0.0.1:0",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(loopback_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:0",
            "[::]:0",
            "10.0.0.1:80",
            "192.168.1.1:1",
            "localhost:80",
        ] {
            assert!(loopback_addr(bad).is_err(), "{bad}");
        }
        let e = loopback_addr("0.0.0.0:0").unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
    }

    #[test]
    fn pairs_are_checked() {
        assert_eq!(
            lb_arg("lb-1=/tmp/x.json").unwrap(),
            ("lb-1".to_owned(), PathBuf::from("/tmp/x.json"))
        );
        assert!(lb_arg("lb 1=/tmp/x").is_err());
        assert!(lb_arg("=/tmp/x").is_err());
        assert!(lb_arg("lb-1=").is_err());
        assert!(lb_arg("lb-1").is_err());
        assert!(upstream_arg("web.1=127.0.0.1:9000").is_ok());
        assert!(upstream_arg("web/1=127.0.0.1:9000").is_err());
        assert!(upstream_arg("web=10.0.0.1:9000").is_err());
    }
}
