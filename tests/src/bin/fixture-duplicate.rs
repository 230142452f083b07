//! Fixture host: two plugins named `notes` (CP002).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(fixtures::NOTES);
inventory::submit!(plugin("notes", &[], false, fixtures::register_nothing));

fn main() -> std::process::ExitCode {
    callplane::main()
}
