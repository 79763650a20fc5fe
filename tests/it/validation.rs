//! Filled in by the validation work in progress.
