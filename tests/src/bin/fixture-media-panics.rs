//! Fixture host: the real permissions and twilio plugins, and a `media` plugin (the relay's name,
//! requirements and criticality) whose registration panics. The host must run DEGRADED and answer
//! calls with today's TwiML: straight to the media server, as without the relay.

use callplane_e2e::fixtures::{plugin, register_panic};
use callplane_plugin_permissions as _;
use callplane_plugin_twilio as _;

inventory::submit!(plugin("media", &["twilio"], false, register_panic));

fn main() -> std::process::ExitCode {
    callplane::main()
}
