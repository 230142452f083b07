//! Password hashing: PBKDF2-HMAC-SHA256 (`ring`), stored as
//! `pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>` so the cost can be raised later.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations for new hashes (OWASP 2023 guidance for PBKDF2-HMAC-SHA256).
pub const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";

/// Passwords longer than this are refused before hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Hashes `password` with a fresh random salt.
///
/// # Panics
/// When the operating system's random generator fails (nothing safe can be done then).
pub fn hash(password: &str) -> String {
    hash_with(password, ITERATIONS)
}

fn hash_with(password: &str, iterations: u32) -> String {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .expect("the OS random generator works");
    let mut out = [0u8; HASH_LEN];
    let rounds = NonZeroU32::new(iterations).expect("iterations are positive");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, &salt, password.as_bytes(), &mut out);
    format!("{SCHEME}${iterations}${}${}", B64.encode(salt), B64.encode(out))
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or an unreadable stored hash).
    No,
    /// Right password, hash parameters current.
    Yes,
    /// Right password; the stored hash uses fewer iterations than today's and should be replaced.
    YesRehash,
}

/// Checks `password` against a stored hash in constant time (`ring::pbkdf2::verify`).
pub fn verify(password: &str, stored: &str) -> Verified {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verified::No;
    };
    let (Some(rounds), Ok(salt), Ok(expected)) = (
        iterations.parse::<u32>().ok().and_then(NonZeroU32::new),
        B64.decode(salt),
        B64.decode(expected),
    ) else {
        return Verified::No;
    };
    match pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &expected,
    ) {
        Ok(()) if rounds.get() < ITERATIONS => Verified::YesRehash,
        Ok(()) => Verified::Yes,
        Err(_) => Verified::No,
    }
}

/// A hash of a random password nobody knows, with today's parameters: what [`burn`] verifies
/// against. A constant, not built on first use: building it would make the first unknown-account
/// login after a start slower than the rest, a one-shot timing oracle.
const DUMMY_HASH: &str = "pbkdf2-sha256$600000$wariQG4AZmDI4C/+6tmqIw$9EKzfL2HdIdBR2xqEp/fSfRhMwQcozzFm1Zgbrvhnkw";

/// Spends the same time as a real verification, for unknown accounts: the answer time must not
/// tell whether an e-mail address has an account.
pub fn burn(password: &str) {
    let _ = verify(password, DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("correct horse battery");
        let b = hash("correct horse battery");
        assert_ne!(a, b, "random salt");
        assert!(a.starts_with("pbkdf2-sha256$600000$"), "{a}");
        assert_eq!(verify("correct horse battery", &a), Verified::Yes);
        assert_eq!(verify("correct horse batterY", &a), Verified::No);
        assert!(!a.contains("correct"), "the password is not in the hash");
    }

    #[test]
    fn weaker_hashes_ask_for_a_rehash() {
        let old = hash_with("pw-from-2019", 10_000);
        assert_eq!(verify("pw-from-2019", &old), Verified::YesRehash);
        assert_eq!(verify("wrong", &old), Verified::No);
    }

    #[test]
    fn the_timing_equaliser_costs_what_a_current_hash_costs() {
        // Same scheme, iterations and lengths as a fresh hash: verifying against it takes the
        // time a real account's check takes, from the first login on (nothing is built lazily).
        let fresh = hash("whatever it is");
        let shape = |h: &str| {
            let parts: Vec<&str> = h.split('$').collect();
            (parts[0].to_owned(), parts[1].to_owned(), parts[2].len(), parts[3].len())
        };
        assert_eq!(shape(DUMMY_HASH), shape(&fresh));
        assert_eq!(DUMMY_HASH.split('$').nth(1), Some(ITERATIONS.to_string().as_str()));
        assert_eq!(verify("", DUMMY_HASH), Verified::No, "well-formed, and matches nothing");
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for stored in [
            "",
            "plain",
            "pbkdf2-sha256$0$AAAA$AAAA",
            "pbkdf2-sha256$x$AAAA$AAAA",
            "md5$1$a$b",
            "pbkdf2-sha256$1$!!$AAAA",
            "pbkdf2-sha256$1$AAAA$AAAA$extra",
        ] {
            assert_eq!(verify("anything", stored), Verified::No, "{stored}");
        }
    }
}
