//! Fixture host: webhook routes that are public or behind page access (CP007, CP008).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(fixtures::TWILIO);
inventory::submit!(plugin("hooks", &[], false, fixtures::register_bad_webhooks));

fn main() -> std::process::ExitCode {
    callplane::main()
}
