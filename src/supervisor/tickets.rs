//! TLS session-ticket keys: one secret, a key per time window, rotated live through SDS.
//!
//! Left to itself, Envoy makes random ticket keys in every TLS context: each hot restart, each
//! certificate rotation and each HA failover then sends every returning client through a full
//! handshake (the expensive part of TLS). Here every TLS listener reads its keys from one SDS
//! file the supervisor writes ([`xds::TICKETS_FILE`]):
//! - The key of window `w` (`w = unix time / rotate_s`) is HKDF-SHA256 of the secret with `w`:
//!   two nodes given the same secret file agree on every key without talking, and a new Envoy
//!   epoch gets the keys of the one before.
//! - The file holds the keys of `w` (encrypts), `w - 1` and `w + 1` (decrypt only): a ticket
//!   stays good for at least one whole window after it was issued, and a node whose clock runs
//!   a little behind its peer's still reads the tickets the peer issued after its rotation.
//! - The rotation rewrites the file at each window's start; Envoy swaps its TLS contexts for new
//!   connections only, so no handshake in flight fails.

use super::Supervisor;
use crate::metrics;
use crate::render::xds;
use crate::settings::Settings;
use crate::store;
use anyhow::{bail, Context};
use sha2::Sha256;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest secret accepted: as strong as the keys made from it.
pub const MIN_SECRET: usize = 32;
/// HKDF's `info`: what these keys are for, so that the secret could serve elsewhere without
/// two uses ever sharing a key.
const INFO: &[u8] = b"vpsie-lb session ticket key v1";

/// The secret and the window length; the keys follow from them and the clock.
#[derive(Clone)]
pub struct Tickets {
    secret: Vec<u8>,
    rotate_s: u64,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        write!(f, "Tickets {{ rotate_s: {} }}", self.rotate_s)
    }
}

impl Tickets {
    pub fn new(secret: Vec<u8>, rotate_s: u32) -> anyhow::Result<Tickets> {
        if secret.len() < MIN_SECRET {
            bail!(
                "holds {} bytes; a secret needs at least {MIN_SECRET}",
                secret.len()
            );
        }
        // The HA examples' placeholder: a secret everyone can read in the repository would let
        // anyone decrypt the tickets, and with them the sessions.
        if secret.windows(7).any(|w| w == b"REPLACE") {
            bail!("is still the example's placeholder; write `openssl rand -hex 32` into it");
        }
        Ok(Tickets {
            secret,
            rotate_s: u64::from(rotate_s.max(1)),
        })
    }

    /// Reads the secret file of `settings`, creating it (32 random bytes as hex, 0600) when
    /// missing. Refused: a file that group or others can read, or one too short.
    pub fn load(settings: &Settings) -> anyhow::Result<Tickets> {
        let path = settings.ticket_secret_path();
        let what = || format!("session_tickets.secret_file: {}", path.display());
        if !path.exists() {
            let mut raw = [0u8; MIN_SECRET];
            getrandom::fill(&mut raw)
                .map_err(|e| anyhow::anyhow!("no random bytes from the system: {e}"))?;
            let text = format!("{}\n", hex::encode(raw));
            store::write_private(&path, text.as_bytes()).with_context(what)?;
            tracing::info!(path = %path.display(), "session-ticket secret created");
        }
        check_private(&path).with_context(what)?;
        let secret = std::fs::read(&path).with_context(what)?;
        Tickets::new(secret, settings.session_tickets.rotate_s).with_context(what)
    }

    /// The window `unix_s` falls in.
    pub fn window(&self, unix_s: u64) -> u64 {
        unix_s / self.rotate_s
    }

    /// The key of window `w` (80 bytes, as Envoy takes it: name, HMAC key, AES key).
    pub fn key(&self, w: u64) -> [u8; 80] {
        let mut info = INFO.to_vec();
        info.extend_from_slice(&w.to_be_bytes());
        let mut out = [0u8; 80];
        // 80 bytes is far below HKDF-SHA256's limit (255 × 32), so this cannot fail.
        hkdf::Hkdf::<Sha256>::new(None, &self.secret)
            .expand(&info, &mut out)
            .unwrap_or_default();
        out
    }

    /// The keys in force at `unix_s`: this window's first (it encrypts), then the last one's
    /// and the next one's.
    pub fn keys_at(&self, unix_s: u64) -> [[u8; 80]; 3] {
        let w = self.window(unix_s);
        [self.key(w), self.key(w.saturating_sub(1)), self.key(w + 1)]
    }

    /// The SDS file for `unix_s`.
    pub fn file_at(&self, unix_s: u64) -> xds::File {
        xds::tickets_file(&self.keys_at(unix_s))
    }

    /// The SDS file for now, by the wall clock (the one HA nodes share).
    pub fn current_file(&self) -> xds::File {
        self.file_at(crate::pipeline::now_unix().max(0) as u64)
    }

    /// How long from `unix_ms` (milliseconds) until the next window starts.
    pub fn until_next(&self, unix_ms: u64) -> Duration {
        let period = self.rotate_s * 1000;
        Duration::from_millis(period - unix_ms % period)
    }
}

/// Milliseconds since the epoch, by the wall clock (the one HA nodes share).
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A secret file must be readable by its owner only, as a private key is.
fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("is readable by group or others (mode {mode:04o}); it must be 0600 or stricter");
    }
    Ok(())
}

impl Tickets {
    /// When the next window starts (a little after, so that the clock is surely in it).
    pub fn next_rotation(&self) -> Instant {
        Instant::now() + self.until_next(unix_now_ms()) + Duration::from_millis(20)
    }
}

impl Supervisor {
    /// A new window: the live epoch's keys move on, confirmed from Envoy's config dump where a
    /// listener reads them. A failure leaves the last keys in force (they still decrypt the
    /// tickets of the window before), so it is logged and counted, and the next rotation tries
    /// again.
    pub(super) async fn rotate_tickets(&mut self) {
        let file = self.tickets.current_file();
        // Counted only where keys were written: with no epoch running there is nothing to
        // rotate (the next one starts with the keys of its time).
        let label = match self.put_tickets(&file).await {
            Ok(true) => {
                tracing::info!(version = file.version, "session-ticket keys rotated");
                metrics::Rotation::Ok
            }
            Ok(false) => return,
            Err(e) => {
                tracing::error!("session-ticket keys not rotated: {e}");
                metrics::Rotation::Failed
            }
        };
        self.metrics.ticket_rotations.inc(label);
    }

    /// Writes `file` into the live epoch's directory; true once Envoy holds it (or no listener
    /// reads it), false when no epoch runs (the next one starts with the keys of its time).
    async fn put_tickets(&mut self, file: &xds::File) -> Result<bool, String> {
        let (Some(files), Some(epoch)) = (&mut self.files, &self.live) else {
            return Ok(false);
        };
        let used = files.xds.tickets;
        let watch = epoch.watch();
        files.put_always(file)?;
        if !used {
            return Ok(true);
        }
        let deadline =
            Instant::now() + Duration::from_secs(self.settings.supervisor.confirm_timeout_s.into());
        loop {
            let have = match self.admin.xds_state().await {
                Ok(d) => d.secrets.get(xds::TICKET_SECRET).cloned(),
                Err(_) => None,
            };
            if have.as_deref() == Some(file.version.as_str()) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Envoy holds version {} of the keys, not {}, after {} s",
                    have.as_deref().unwrap_or("none"),
                    file.version,
                    self.settings.supervisor.confirm_timeout_s
                ));
            }
            super::confirm::pause(&watch, Duration::from_millis(25)).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickets(secret: &[u8], rotate_s: u32) -> Tickets {
        Tickets::new(secret.to_vec(), rotate_s).unwrap()
    }

    #[test]
    fn two_nodes_with_one_secret_agree_on_every_key_without_talking() {
        let (a, b) = (tickets(&[7; 32], 3600), tickets(&[7; 32], 3600));
        let other = tickets(&[8; 32], 3600);
        let t = 1_800_000_000;
        assert_eq!(a.keys_at(t), b.keys_at(t));
        assert_eq!(a.file_at(t), b.file_at(t), "the same file, byte for byte");
        assert_ne!(a.key(5), other.key(5), "another secret, other keys");
        // Within a window the keys stand still; the next window's file keeps the last key.
        assert_eq!(a.keys_at(t - t % 3600), a.keys_at(t - t % 3600 + 3599));
        let [now, before, next] = a.keys_at(t);
        let [later, was, _] = a.keys_at(t + 3600);
        assert_eq!(
            (later, was),
            (next, now),
            "the next window's key was already held"
        );
        assert_ne!(now, before);
        assert_ne!(now, next);
        // The key is RFC 5869 HKDF-SHA256 of the secret, with the window in `info`.
        let mut info = INFO.to_vec();
        info.extend_from_slice(&a.window(t).to_be_bytes());
        let mut want = [0u8; 80];
        hkdf::Hkdf::<Sha256>::new(None, &[7; 32])
            .expand(&info, &mut want)
            .unwrap();
        assert_eq!(now, want);
    }

    #[test]
    fn the_file_holds_the_keys_in_order_and_never_the_secret() {
        use base64::Engine;
        let t = tickets(b"0123456789abcdef0123456789abcdef", 60);
        let f = t.file_at(600);
        let v: serde_json::Value = serde_json::from_slice(&f.data).unwrap();
        let secret = &v["resources"][0];
        assert_eq!(secret["name"], xds::TICKET_SECRET);
        assert_eq!(secret["@type"], xds::SECRET);
        let keys: Vec<Vec<u8>> = secret["session_ticket_keys"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k["inline_bytes"].as_str().unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(
            keys,
            [t.key(10).to_vec(), t.key(9).to_vec(), t.key(11).to_vec()]
        );
        let text = String::from_utf8(f.data.clone()).unwrap();
        assert!(!text.contains("0123456789abcdef"));
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn the_next_window_is_counted_in_milliseconds() {
        let t = tickets(&[1; 32], 60);
        assert_eq!(t.until_next(60_000), Duration::from_secs(60));
        assert_eq!(t.until_next(119_999), Duration::from_millis(1));
        assert_eq!(t.window(119), 1);
        assert_eq!(t.window(120), 2);
    }

    #[test]
    fn a_secret_is_created_private_and_refused_when_others_can_read_it_or_it_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings {
            state_dir: dir.path().join("state"),
            ..Settings::default()
        };
        let first = Tickets::load(&s).unwrap();
        let path = s.ticket_secret_path();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 65, "32 bytes as hex");
        let again = Tickets::load(&s).unwrap();
        assert_eq!(first.key(1), again.key(1), "read back, not made anew");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!("{:#}", Tickets::load(&s).unwrap_err());
        assert!(
            e.contains("session_tickets.secret_file") && e.contains("0640"),
            "{e}"
        );

        let short = dir.path().join("short.key");
        std::fs::write(&short, b"too short").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        s.session_tickets.secret_file = Some(short);
        let e = format!("{:#}", Tickets::load(&s).unwrap_err());
        assert!(e.contains("short.key") && e.contains("at least 32"), "{e}");

        let e = format!(
            "{:#}",
            Tickets::new(
                b"REPLACE-WITH-openssl-rand-hex-32-THE-SAME-ON-EVERY-NODE".to_vec(),
                60
            )
            .unwrap_err()
        );
        assert!(e.contains("placeholder"), "{e}");
    }
}
