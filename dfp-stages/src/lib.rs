//! # dfp-stages: the built-in stages
//!
//! One file per stage, named for its YAML `type`:
//!
//! | type | kind | file |
//! | --- | --- | --- |
//! | `file-source` | source | [`sources::file`] |
//! | `kafka-source` | source | [`sources::kafka`] |
//! | `generator` | source | [`sources::generator`] |
//! | `normalize` | transform | [`normalize::generic`] |
//! | `normalize-azure` | transform | [`normalize::azure`] |
//! | `normalize-duo` | transform | [`normalize::duo`] |
//! | `features` | transform | [`transforms::features`] |
//! | `profiles` | transform | [`profile::stage`] |
//! | `train` | transform | [`transforms::train`] |
//! | `score` | transform | [`transforms::score`] |
//! | `correlate` | transform | [`correlate`] |
//! | `threshold` | transform | [`transforms::threshold`] |
//! | `suppress` | transform | [`transforms::suppress`] |
//! | `add-user-data` | transform | [`transforms::user_data`] |
//! | `filter` | transform | [`transforms::filter`] |
//! | `select` | transform | [`transforms::select`] |
//! | `passthrough` | transform | [`transforms::passthrough`] |
//! | `kafka-sink` | sink | [`sinks::kafka`] |
//! | `file-sink` | sink | [`sinks::file`] |
//! | `alert-store` | sink | [`sinks::alert_store`] |
//! | `stdout-sink` | sink | [`sinks::stdout`] |
//! | `blackhole` | sink | [`sinks::blackhole`] |
//!
//! The model itself (encoding, network, training, artifacts) is in [`model`], the model registry in
//! [`registry`], user profiles (stored history, checkpoints) in [`profile`].
//!
//! Besides the stages: [`generate`] writes labelled synthetic sign-in logs (`dfp generate`) and [`eval`]
//! measures detection quality against those labels (`dfp eval`); [`console`] answers the analyst console's
//! queries over an alert store (`dfp serve`).
//!
//! Stages register themselves through `inventory`. A program must link this crate for them to be
//! available; calling [`link`] once (the `dfp` binary does) guarantees the linker keeps it.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod console;
pub mod correlate;
pub mod encode;
pub mod eval;
pub mod families;
pub mod generate;
pub mod kafka_client;
pub mod model;
pub mod normalize;
pub mod profile;
pub mod registry;
pub mod report;
pub mod scored;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod summary;
pub mod time;
pub mod transforms;

/// Makes sure this crate's stage registrations are linked into the program. Call it once before
/// looking stages up (it does nothing else).
#[inline(never)]
pub fn link() {
    std::hint::black_box(());
}
