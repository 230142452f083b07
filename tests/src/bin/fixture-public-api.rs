//! Fixture host: a public /api route off the allow-list (CP009).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(plugin("leaky", &[], false, fixtures::register_public_api));

fn main() -> std::process::ExitCode {
    callplane::main()
}
