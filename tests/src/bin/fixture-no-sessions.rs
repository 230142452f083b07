//! Fixture host: page-access routes with no session provider linked (CP004 against permissions).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(plugin("agenda", &[], true, fixtures::register_agenda));

fn main() -> std::process::ExitCode {
    callplane::main()
}
