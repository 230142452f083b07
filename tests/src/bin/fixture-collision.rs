//! Fixture host: two plugins declare GET /api/notes (CP003).

use callplane_e2e::fixtures::{self, plugin};

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(fixtures::NOTES);
inventory::submit!(plugin("memos", &["permissions"], false, fixtures::register_colliding));

fn main() -> std::process::ExitCode {
    callplane::main()
}
