//! Rendering a change of endpoints only: the last config is kept with where each cluster's
//! endpoint list sits in it, and a new spec whose view differs from the last one only in its
//! endpoints (and in the config's certificate directory, which is named by the config's hash)
//! gets the last text with the changed lists rewritten, instead of a run of the templates.
//!
//! Why: the agent follows a spec whose most frequent change is a backend coming or going. At
//! 10,000 backends the templates and their context cost most of the pipeline; an endpoint-only
//! change now writes only the lists that changed (`cargo bench --bench pipeline` prints both).
//!
//! It is never trusted blindly: a spliced config goes through the same self-check as a full
//! render, and anything unexpected (a list not found, a check failing) falls back to a full
//! render. Tests compare the two byte for byte.

use super::view::{Endpoint, View};
use super::{
    build_view, check, quote, render_view, write_lb_endpoints, Challenges, RenderError, Rendered,
    ENDPOINT_BYTES, LB_ENDPOINTS_END,
};
use crate::resolve::Resolved;
use crate::settings::Settings;
use crate::spec::Spec;
use std::ops::Range;

/// How a config was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// From the templates.
    Full,
    /// From the last config, with `changed` endpoint lists rewritten.
    Spliced { changed: usize },
}

/// The last config rendered, for the next render. Empty until the first.
#[derive(Debug, Default)]
pub struct Cache {
    last: Option<Last>,
}

#[derive(Debug)]
struct Last {
    /// The view with every endpoint list emptied, serialised: a splice needs the next view's to
    /// be the same (certificate directory aside).
    shape: String,
    cert_dir: String,
    config: String,
    /// Each cluster's endpoint list in `config` (the view's order), with the endpoints it holds.
    lists: Vec<(Range<usize>, Vec<Endpoint>)>,
}

impl Cache {
    /// Renders as [`super::render`] does, splicing the endpoint lists into the last config when
    /// nothing else changed. The result is the same text either way.
    pub fn render(
        &mut self,
        spec: &Spec,
        settings: &Settings,
        resolved: &Resolved,
        challenges: &Challenges,
    ) -> Result<(Rendered, How), RenderError> {
        let (mut view, files) = build_view(spec, settings, resolved, challenges);
        let cert_dir = settings.cert_dir().to_string_lossy().into_owned();
        // Taken out for the shape, moved back for the render or the self-check, and out again
        // for the cache.
        let take_out = |view: &mut View| -> Vec<Vec<Endpoint>> {
            view.clusters
                .iter_mut()
                .map(|c| std::mem::take(&mut c.endpoints))
                .collect()
        };
        let put_back = |view: &mut View, endpoints: &mut Vec<Vec<Endpoint>>| {
            for (c, e) in view.clusters.iter_mut().zip(endpoints.iter_mut()) {
                c.endpoints = std::mem::take(e);
            }
        };
        let mut endpoints = take_out(&mut view);
        let shape = serde_json::to_string(&view).map_err(|e| RenderError::Render(e.to_string()))?;
        // Taken out: a render that fails leaves no cache, rather than one for another config.
        let spliced = self
            .last
            .take()
            .and_then(|last| splice(&last, &shape, &cert_dir, &endpoints));
        put_back(&mut view, &mut endpoints);
        if let Some((config, lists, changed)) = spliced {
            match check(&config, &view) {
                Ok(()) => {
                    self.last = Some(Last {
                        shape,
                        cert_dir,
                        config: config.clone(),
                        lists: lists.into_iter().zip(take_out(&mut view)).collect(),
                    });
                    return Ok((Rendered { config, files }, How::Spliced { changed }));
                }
                // A bug here must cost a full render, never a wrong config.
                Err(e) => {
                    tracing::warn!(
                        "a spliced config failed its self-check ({e}); rendering it whole"
                    )
                }
            }
        }
        let config = render_view(&view)?;
        self.last = find_lists(&config, view.clusters.len()).map(|lists| Last {
            shape,
            cert_dir,
            config: config.clone(),
            lists: lists.into_iter().zip(take_out(&mut view)).collect(),
        });
        Ok((Rendered { config, files }, How::Full))
    }
}

/// Where each of `n` clusters' endpoint lists is in a config from the templates: after each
/// `"lb_endpoints": [` that opens a list on its own line (the metrics clusters' inline lists do
/// not), up to the list's end. None unless there are exactly `n`.
fn find_lists(config: &str, n: usize) -> Option<Vec<Range<usize>>> {
    const MARK: &str = "\"lb_endpoints\": [\n";
    let mut lists = Vec::with_capacity(n);
    let mut pos = 0;
    for _ in 0..n {
        let start = pos + config[pos..].find(MARK)? + MARK.len() - 2;
        let end = start + config[start..].find(LB_ENDPOINTS_END)? + LB_ENDPOINTS_END.len();
        lists.push(start..end);
        pos = end;
    }
    if config[pos..].contains(MARK) {
        return None;
    }
    Some(lists)
}

/// The last config with the changed endpoint lists rewritten and the certificate directory
/// renamed, the new lists' places, and how many changed; None when more than endpoints changed.
fn splice(
    last: &Last,
    shape: &str,
    cert_dir: &str,
    endpoints: &[Vec<Endpoint>],
) -> Option<(String, Vec<Range<usize>>, usize)> {
    if endpoints.len() != last.lists.len() {
        return None;
    }
    // The directory is renamed as text, so both must be written as they are, in the view's JSON
    // and in the config's escaping alike.
    let rename = last.cert_dir != cert_dir;
    let (from, to) = (format!("{}/", last.cert_dir), format!("{cert_dir}/"));
    if rename {
        let plain = |d: &str| quote(d).len() == d.len() + 2 && !d.is_empty();
        if !plain(&last.cert_dir) || !plain(cert_dir) || last.shape.replace(&from, &to) != shape {
            return None;
        }
    } else if last.shape != shape {
        return None;
    }
    let grown: usize = endpoints.iter().map(Vec::len).sum::<usize>() * ENDPOINT_BYTES;
    let mut out = String::with_capacity(last.config.len() + grown / 8);
    let mut lists = Vec::with_capacity(endpoints.len());
    let mut changed = 0;
    let mut pos = 0;
    for ((range, old), new) in last.lists.iter().zip(endpoints) {
        out.push_str(&last.config[pos..range.start]);
        let start = out.len();
        if old == new {
            out.push_str(&last.config[range.clone()]);
        } else {
            changed += 1;
            write_lb_endpoints(
                &mut out,
                new.iter()
                    .map(|e| (e.address.as_str(), u64::from(e.port), u64::from(e.weight))),
            );
        }
        lists.push(start..out.len());
        pos = range.end;
    }
    out.push_str(&last.config[pos..]);
    if rename {
        // In one pass over the whole text. Endpoint lists hold IP addresses only, never a path,
        // so only the certificate paths change; the lists move if the names' lengths differ.
        out = out.replace(&from, &to);
        if from.len() != to.len() {
            lists = find_lists(&out, endpoints.len())?;
        }
    }
    Some((out, lists, changed))
}
