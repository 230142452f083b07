//! Fixture host: two non-critical plugins fail to register (one errors, one panics).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(fixtures::NOTES);
inventory::submit!(plugin("flaky", &[], false, fixtures::register_error));
inventory::submit!(plugin("crashy", &[], false, fixtures::register_panic));

fn main() -> std::process::ExitCode {
    callplane::main()
}
