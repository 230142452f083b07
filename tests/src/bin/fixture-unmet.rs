//! Fixture host: `notes` without the `permissions` it requires (CP004).

use callplane_e2e::fixtures;

inventory::submit!(fixtures::NOTES);

fn main() -> std::process::ExitCode {
    callplane::main()
}
