//! The xDS writer: puts a config's dynamic resources into the running Envoy through its
//! file-based xDS, make before break, and confirms from Envoy's admin API that it took them.
//!
//! Why files and not ADS: the resources are the templates' output moved into place
//! ([`crate::render::xds`]), so what Envoy validated is byte for byte what it serves, with no
//! second rendering path (ADS would need the protobuf types and a gRPC server beside the
//! templates). What files cost, and how it is paid:
//! - Envoy sees only a rename onto the watched name: every file is written to `<xds>/.tmp`,
//!   synced and renamed (temporary files never appear in a watched directory).
//! - Separate files give no ordering: each step waits until Envoy reports it before the next.
//! - One inotify instance per subscription: counted before an apply and refused with a clear
//!   error when `fs.inotify.max_user_instances` cannot hold it (running out crashes Envoy).
//! - Each epoch reads its own directory (`<xds>/<epoch>`): while a hot restart drains the old
//!   epoch, changes reach only the new one.

use super::confirm::{Confirm, Expect};
use super::transition::{self, Transition};
use super::{hold, protocol, Supervisor};
use crate::envoy::admin::XdsStats;
use crate::envoy::process::ExitWatch;
use crate::render::xds::{self, Kind, Xds};
use crate::render::Rendered;
use crate::settings::Settings;
use crate::spec::ConfigHash;
use crate::store;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Headroom left for everything else that uses inotify (systemd, other services).
const INOTIFY_HEADROOM: u64 = 16;

/// The live epoch's directory: what it holds, and the only writer of it.
#[derive(Debug, Clone)]
pub(super) struct LiveFiles {
    /// The config Envoy confirmed last (shared: at 10,000 backends a copy costs milliseconds).
    pub xds: Arc<Xds>,
    /// What `status` shows of them.
    pub status: protocol::ResourcesStatus,
    /// File name → version of what is on disk now (may be ahead of `xds` mid-apply).
    written: BTreeMap<String, String>,
    /// The clusters in `cds.json` now (during an apply: the old ones and the new).
    clusters: BTreeMap<String, Value>,
    /// The clusters the listeners and routes on disk were written for: only these must stay
    /// until new listeners and routes are confirmed.
    routed: BTreeSet<String>,
    /// Where files are written before they are renamed into the directory.
    tmp: PathBuf,
    /// Pools whose cluster object was made anew by a move ([`transition`]) or a redefinition:
    /// its own generation's file, its first checks' spread. Kept until the epoch ends.
    moved: BTreeMap<String, xds::Moved>,
    /// The last generation given out.
    generation: u64,
}

impl LiveFiles {
    /// Writes every file of `x` into its (fresh) directory, then `own` (the supervisor's files
    /// that are not the config's: the runtime layer, the session-ticket keys), bootstrap last.
    pub(super) fn create(
        x: &Arc<Xds>,
        hash: &ConfigHash,
        settings: &Settings,
        own: [xds::File; 2],
    ) -> Result<LiveFiles, String> {
        let _ = std::fs::remove_dir_all(&x.dir);
        let mut files = LiveFiles {
            xds: Arc::clone(x),
            status: protocol::ResourcesStatus {
                hash: hash.clone(),
                lds_version: x.lds().version,
                cds_version: x.cds(&BTreeMap::new(), &BTreeMap::new()).version,
                live_applies: 0,
            },
            written: BTreeMap::new(),
            clusters: x.clusters.clone(),
            routed: x.clusters.keys().cloned().collect(),
            tmp: xds_root(settings).join(".tmp"),
            moved: BTreeMap::new(),
            generation: 0,
        };
        for f in x.all_files().iter().chain(&own) {
            files.put_always(f)?;
        }
        files.write(
            "bootstrap.json",
            &xds::File {
                name: "bootstrap.json".into(),
                version: String::new(),
                data: x.bootstrap().into_bytes(),
            },
        )?;
        Ok(files)
    }

    /// One file, renamed into place from outside the watched directory. Not fsynced: an epoch
    /// always starts from a directory written afresh from the stored (synced) config.
    fn write(&self, name: &str, f: &xds::File) -> Result<(), String> {
        let to = self.xds.dir.join(name);
        store::write_private_via(&self.tmp, &to, &f.data, store::Durability::Atomic)
            .map_err(|e| format!("{e:#}"))
    }

    /// Writes `f` unless the same version is already there; true when it wrote.
    pub(super) fn put(&mut self, f: &xds::File) -> Result<bool, String> {
        self.put_as(&f.name, f)
    }

    fn put_as(&mut self, name: &str, f: &xds::File) -> Result<bool, String> {
        if self.written.get(name) == Some(&f.version) {
            return Ok(false);
        }
        self.write(name, f)?;
        self.written.insert(name.to_owned(), f.version.clone());
        Ok(true)
    }

    /// Writes `f` whatever is believed to be there.
    pub(super) fn put_always(&mut self, f: &xds::File) -> Result<(), String> {
        self.write(&f.name, f)?;
        self.written.insert(f.name.clone(), f.version.clone());
        Ok(())
    }

    /// Writes pool `pool`'s endpoint list `f` into the file its cluster reads now.
    pub(super) fn put_endpoints(&mut self, pool: &str, f: &xds::File) -> Result<bool, String> {
        match self.moved.get(pool).map(|m| m.file.clone()) {
            Some(name) => self.put_as(&name, f),
            None => self.put(f),
        }
    }

    /// Gives pool `pool` a file of a new generation, for a list of `hosts`: the next CDS file
    /// points its cluster there, which Envoy takes as a new cluster object to warm.
    pub(super) fn next_generation(&mut self, pool: &str, hosts: usize) {
        self.generation += 1;
        let file = xds::warm_file_name(pool, self.generation);
        self.moved
            .insert(pool.to_owned(), xds::Moved { file, hosts });
    }

    /// Forgets what is on disk, so that the next apply writes every file again (a forced
    /// resync: whatever is believed to be there).
    pub(super) fn forget_written(&mut self) {
        self.written.clear();
    }

    /// After a live apply: the files `new` does not name are deleted (the supervisor's own
    /// runtime and ticket files stay), and `new` is what the epoch runs.
    fn settle(&mut self, new: &Arc<Xds>, lds_version: String, cds_version: String) {
        self.moved
            .retain(|pool, _| new.endpoints.contains_key(pool));
        let mut keep = new.file_names();
        keep.extend(self.moved.values().map(|m| m.file.clone()));
        let dir = self.xds.dir.clone();
        self.written.retain(|name, _| {
            let keep_it =
                keep.contains(name) || name == xds::RUNTIME_FILE || name == xds::TICKETS_FILE;
            if !keep_it {
                let _ = std::fs::remove_file(dir.join(name));
            }
            keep_it
        });
        self.xds = Arc::clone(new);
        self.status.lds_version = lds_version;
        self.status.cds_version = cds_version;
    }
}

/// Where the xDS files of every epoch live.
pub(super) fn xds_root(settings: &Settings) -> PathBuf {
    settings.envoy.config_dir.join("xds")
}

/// The directory epoch `epoch` reads.
/// Where an epoch's stderr goes: the runtime directory of Envoy's admin socket (`/run/vpsie-lb`
/// in the image), not the config disk, which must stay free of files held open for writing (a
/// disk that turns read-only is remounted, a full one recovers, without Envoy in the way).
pub(super) fn stderr_path(settings: &Settings, epoch: u32) -> PathBuf {
    stderr_dir(settings).join(format!("envoy-{epoch}.stderr"))
}

pub(super) fn stderr_dir(settings: &Settings) -> PathBuf {
    settings
        .envoy
        .admin_socket
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub(super) fn epoch_dir(settings: &Settings, epoch: u32) -> PathBuf {
    xds_root(settings).join(epoch.to_string())
}

/// Inotify instances an epoch of this config holds: one per file subscription (LDS, CDS and the
/// runtime layer, the ticket keys where a listener terminates TLS, then one per named resource).
pub(super) fn inotify_need(x: &Xds) -> u64 {
    (3 + usize::from(x.tickets) + x.routes.len() + x.endpoints.len() + x.secrets.len()) as u64
}

/// Whether `new` differs from `live` in endpoint lists only (the same bootstrap, listeners,
/// routes, clusters and certificates).
pub(super) fn only_endpoints_differ(live: &Xds, new: &Xds) -> bool {
    live.bootstrap_key == new.bootstrap_key
        && live.dir == new.dir
        && live.clusters == new.clusters
        && live.listeners == new.listeners
        && live.routes == new.routes
        && live.secrets == new.secrets
        && live.runtime == new.runtime
}

/// Refuses a config whose subscriptions, counted for two epochs at once (a hot restart), do not
/// fit in the kernel's per-user inotify limit: Envoy would crash when it runs out.
pub(super) fn check_inotify(x: &Xds) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances") else {
        return Ok(());
    };
    let Ok(max) = text.trim().parse::<u64>() else {
        return Ok(());
    };
    let need = 2 * inotify_need(x) + INOTIFY_HEADROOM;
    if need > max {
        return Err(format!(
            "this config needs {} inotify instances per Envoy epoch ({need} with a hot restart and headroom), but fs.inotify.max_user_instances is {max}; raise it (the image sets 8192). The running config keeps serving",
            inotify_need(x)
        ));
    }
    Ok(())
}

impl Supervisor {
    /// Splits a config handed over for the directory of `epoch`.
    pub(super) fn split(&self, rendered: &Rendered, epoch: u32) -> Result<Xds, String> {
        let files: Vec<(PathBuf, String)> = rendered
            .files
            .iter()
            .map(|f| (f.path.clone(), f.contents.clone()))
            .collect();
        xds::split(&rendered.config, &files, &epoch_dir(&self.settings, epoch))
            .map_err(|e| format!("the config does not split into xDS resources: {e}"))
    }

    /// Splits a stored config for the directory of `epoch`.
    pub(super) fn split_stored(&self, hash: &ConfigHash, epoch: u32) -> Result<Xds, String> {
        let path = self.store.config_path(hash);
        let config = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the stored config {}: {e}", path.display()))?;
        let mut files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.store.cert_dir(hash)) {
            for e in entries.flatten() {
                let contents = std::fs::read_to_string(e.path())
                    .map_err(|err| format!("cannot read {}: {err}", e.path().display()))?;
                files.push((e.path(), contents));
            }
        }
        // Every stored config was checked before it was stored, so one that does not read back
        // was most likely damaged on disk: name the file, so that an operator is not sent
        // looking at the spec.
        xds::split(&config, &files, &epoch_dir(&self.settings, epoch)).map_err(|e| {
            format!(
                "the stored config {} does not read back (damaged on disk?): {e}",
                path.display()
            )
        })
    }

    /// Puts `new` into the running Envoy, make before break: certificates and endpoints, then
    /// clusters (old ones kept), wait warm; then routes and listeners, wait active; then the
    /// clusters nothing uses any more are removed and their files deleted. Each step is
    /// confirmed from Envoy's admin API within the deadline; a rejection ends it at once.
    /// Done when Envoy has taken every resource: a pool that moves while it serves is written
    /// as the union of its new hosts and the ones that served, and the transition it returns
    /// finishes in the background ([`transition`]). `hash` is `new`'s config.
    pub(super) async fn apply_live(
        &mut self,
        new: &Arc<Xds>,
        hash: &ConfigHash,
    ) -> Result<BTreeMap<String, Transition>, String> {
        let timeout = Duration::from_secs(self.settings.supervisor.confirm_timeout_s.into());
        let deadline = Instant::now() + timeout;
        let (Some(files), Some(watch)) = (&mut self.files, self.live.as_ref().map(|e| e.watch()))
        else {
            return Err("no live epoch to apply to".into());
        };
        let mut confirm = Confirm {
            admin: &self.admin,
            watch: &watch,
            deadline,
            timeout,
            warming_ok: BTreeSet::new(),
        };
        let t0 = Instant::now();
        let before = Arc::clone(&files.xds);
        let on_disk = files.clusters.clone();
        let routed = files.routed.clone();
        hold("live-baseline").await;
        let baseline = confirm.baseline().await?;

        // 1. Certificates, endpoints, then clusters: the new ones and every one on disk now,
        //    since listeners on disk may still route to them.
        let secrets = put_secrets(files, new)?;
        // A pool that gains hosts while it serves keeps the ones that served (see `transition`).
        let plan = transition::plan(
            &before,
            &self.transitions,
            new,
            hash,
            |pool| baseline.cluster_number(pool, "membership_healthy") > 0,
            timeout,
            Instant::now(),
        );
        // Pools moved as warmed clusters (by this apply or one before) serve from their old
        // object meanwhile: their warm is the transition's, not the apply's. A redefined
        // pool's is the apply's.
        confirm.warming_ok = plan.warm.keys().cloned().collect();
        confirm.warming_ok.extend(
            self.transitions
                .iter()
                .filter(|(n, t)| t.warming && !plan.redefined.contains_key(*n))
                .map(|(n, _)| n.clone()),
        );
        hold("live-bridge").await;
        for (pool, f) in &plan.files {
            if let Some(&hosts) = plan.warm.get(pool).or(plan.redefined.get(pool)) {
                files.next_generation(pool, hosts);
            }
            files.put_endpoints(pool, f)?;
        }
        let extra: BTreeMap<String, Value> = on_disk
            .into_iter()
            .filter(|(k, _)| !new.clusters.contains_key(k) && routed.contains(k))
            .collect();
        let cds = new.cds(&extra, &files.moved);
        files.put(&cds)?;
        // Listener limits before the listeners: a new listener is never without one.
        let runtime = xds::runtime_file(&self.settings.access_log, &new.runtime);
        let runtime = files.put(&runtime)?.then_some(runtime.version);
        files.clusters = new.clusters.clone();
        files.clusters.extend(extra.clone());
        let expect = Expect {
            cds: Some(cds.version.clone()),
            runtime,
            endpoints: plan
                .files
                .iter()
                .map(|(n, f)| (n.clone(), f.version.clone()))
                .collect(),
            ..Expect::default()
        };
        let written = t0.elapsed();
        hold("live-clusters").await;
        confirm.until(&expect, &baseline).await?;
        let clusters = t0.elapsed();

        // 2. Routes, then listeners (certificates are confirmed once a listener uses them).
        let lds = put_listeners(files, new, &extra, secrets, (&confirm, &baseline)).await?;

        // Where an apply's time goes (Envoy's own work is between "written" and "clusters").
        tracing::debug!(
            written_us = written.as_micros() as u64,
            clusters_us = clusters.as_micros() as u64,
            listeners_us = t0.elapsed().as_micros() as u64,
            "live apply steps"
        );
        // 3. Remove what nothing uses any more.
        let final_cds = new.cds(&BTreeMap::new(), &files.moved);
        if !extra.is_empty() {
            files.put(&final_cds)?;
            files.clusters = new.clusters.clone();
            files.routed = new.clusters.keys().cloned().collect();
            let expect = Expect {
                cds: Some(final_cds.version.clone()),
                ..Expect::default()
            };
            hold("live-prune").await;
            confirm.until(&expect, &baseline).await?;
        }
        files.settle(new, lds.version, final_cds.version);
        if plan.superseded > 0 {
            self.metrics.transitions_ended.inc_by(
                crate::metrics::TransitionEnd::Superseded,
                plan.superseded as u64,
            );
        }
        Ok(plan.transitions)
    }

    /// After an epoch is LIVE: every resource it was started with is active, none rejected.
    pub(super) async fn confirm_started(&self, x: &Xds, watch: &ExitWatch) -> Result<(), String> {
        let timeout = Duration::from_secs(self.settings.supervisor.confirm_timeout_s.into());
        let versions = |kind| -> BTreeMap<String, String> {
            x.named_files(kind)
                .into_iter()
                .map(|(n, f)| (n, f.version))
                .collect()
        };
        let expect = Expect {
            cds: Some(x.cds(&BTreeMap::new(), &BTreeMap::new()).version),
            lds: Some(x.lds().version),
            runtime: Some(xds::runtime_file(&self.settings.access_log, &x.runtime).version),
            endpoints: versions(Kind::Endpoints),
            routes: versions(Kind::Route),
            secrets: versions(Kind::Secret),
        };
        let confirm = Confirm {
            admin: &self.admin,
            watch,
            deadline: Instant::now() + timeout,
            timeout,
            warming_ok: BTreeSet::new(),
        };
        // A new process: every rejection it counted is this config's.
        confirm.until(&expect, &XdsStats::default()).await
    }
}

/// Step 1's certificates: the secrets written anew, by name and version.
fn put_secrets(files: &mut LiveFiles, new: &Xds) -> Result<BTreeMap<String, String>, String> {
    let mut secrets = BTreeMap::new();
    for (name, f) in new.named_files(Kind::Secret) {
        if files.put(&f)? {
            secrets.insert(name, f.version);
        }
    }
    Ok(secrets)
}

/// Step 2: routes, then listeners, confirmed with the certificates they use. `extra`: the
/// old clusters the old listeners may still route to until then. Returns the LDS file.
async fn put_listeners(
    files: &mut LiveFiles,
    new: &Xds,
    extra: &BTreeMap<String, Value>,
    secrets: BTreeMap<String, String>,
    (confirm, baseline): (&Confirm<'_>, &XdsStats),
) -> Result<xds::File, String> {
    let routes = new.named_files(Kind::Route);
    for f in routes.values() {
        files.put(f)?;
    }
    let lds = new.lds();
    files.put(&lds)?;
    files.routed = new.clusters.keys().cloned().collect();
    // Until confirmed, the old listeners may still be in use too.
    files.routed.extend(extra.keys().cloned());
    let expect = Expect {
        lds: Some(lds.version.clone()),
        routes: routes
            .iter()
            .map(|(n, f)| (n.clone(), f.version.clone()))
            .collect(),
        secrets,
        ..Expect::default()
    };
    hold("live-listeners").await;
    confirm.until(&expect, baseline).await?;
    Ok(lds)
}
