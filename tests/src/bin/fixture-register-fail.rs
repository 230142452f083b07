//! Fixture host: critical plugins whose registration errors or panics (CP006).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(plugin("broken", &[], true, fixtures::register_error));
inventory::submit!(plugin("crashy", &[], true, fixtures::register_panic));

fn main() -> std::process::ExitCode {
    callplane::main()
}
