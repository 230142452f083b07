//! Fixture host: a valid set of plugins (sessions, notes, signatures, a slow route).

use callplane_e2e::fixtures;

inventory::submit!(fixtures::PERMISSIONS);
inventory::submit!(fixtures::NOTES);
inventory::submit!(fixtures::TWILIO);
inventory::submit!(fixtures::SLOW);

fn main() -> std::process::ExitCode {
    callplane::main()
}
