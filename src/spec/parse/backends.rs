//! A pool's backends: identifiers, addresses (judged by `spec::address`), ports, weights.

use super::{get, Value, Walker};
use crate::spec::address;
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;
use std::collections::HashSet;

impl Walker<'_> {
    pub(super) fn backends(
        &mut self,
        list: &[Value],
        p: &Path,
        back_port: Option<u16>,
    ) -> Vec<Backend> {
        let mut out = Vec::with_capacity(list.len());
        let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let bp = p.index(i);
            let Some(obj) = self.object(item, &bp) else {
                continue;
            };
            let id = self.ident(obj, &bp, "identifier", 64);
            let id = self.required(id, obj, &bp, "identifier");
            if let Some(Value::Str(s)) = get(obj, "identifier") {
                if id.is_some() && !seen.insert(s.as_ref()) {
                    self.f.error(
                        bp.field("identifier"),
                        format!("{} is used by another backend of this pool; identifiers must be unique in a pool", shown(s)),
                    );
                }
            }
            let address =
                self.string(obj, &bp, "ip").and_then(|s| {
                    match address::backend_address(s, self.opts.allow_loopback_backends) {
                        Ok(a) => Some(a),
                        Err(why) => {
                            self.f.error(bp.field("ip"), format!("{} {why}", shown(s)));
                            None
                        }
                    }
                });
            let address = self.required(address, obj, &bp, "ip");
            let port = self.port(obj, &bp, "port").or(back_port);
            let weight = self.u32_in(obj, &bp, "weight", 1, 10_000).unwrap_or(100);
            let enabled = self.flag(obj, &bp, "enabled").unwrap_or(true);
            if let (Some(id), Some(address), Some(port)) = (id, address, port) {
                out.push(Backend {
                    id,
                    address,
                    port,
                    weight,
                    enabled,
                });
            }
        }
        out
    }
}
