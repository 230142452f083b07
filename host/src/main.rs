//! The `callplane` binary.
//!
//! Each bundled plugin crate is linked here, one line each, behind its cargo feature: a crate that
//! nothing references is not linked and its `inventory::submit!` never runs. The critical manifest
//! (`CALLPLANE_CRITICAL_PLUGINS`) catches any plugin that is left out.

#[cfg(feature = "plugin-calendar")]
use callplane_plugin_calendar as _;
#[cfg(feature = "plugin-console")]
use callplane_plugin_console as _;
#[cfg(feature = "plugin-media")]
use callplane_plugin_media as _;
#[cfg(feature = "plugin-permissions")]
use callplane_plugin_permissions as _;
#[cfg(feature = "plugin-twilio")]
use callplane_plugin_twilio as _;

fn main() -> std::process::ExitCode {
    callplane::main()
}
