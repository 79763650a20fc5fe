//! What the daemons tell systemd (`Type=notify` units): ready, stopping, a status line, and the
//! watchdog's pings. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! Errors are ignored on purpose: a notification that cannot be sent must never stop the
//! supervisor or the agent; systemd then judges them by its own timeouts.

use std::time::Duration;

/// Started and serving (or ready to, for the supervisor without a config yet).
pub fn ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Stopping: systemd waits for the exit instead of counting it as a failure.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// The one-line status `systemctl status` shows.
pub fn status(line: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(line)]);
}

/// A watchdog ping: sent from the daemon's own loop, so that a stuck loop stops pinging.
pub fn watchdog() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
}

/// How often to ping the watchdog (half its timeout), when the unit has one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
