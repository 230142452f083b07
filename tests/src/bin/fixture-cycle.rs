//! Fixture host: two plugins that require each other (CP005).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(plugin("alpha", &["beta"], false, fixtures::register_nothing));
inventory::submit!(plugin("beta", &["alpha"], false, fixtures::register_nothing));

fn main() -> std::process::ExitCode {
    callplane::main()
}
