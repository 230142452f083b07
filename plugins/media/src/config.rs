//! The plugin's configuration (`[media]` in `callplane.toml`, `CALLPLANE_MEDIA_*` in the
//! environment).

use std::sync::Arc;
use std::time::Duration;

use callplane_plugin_api::{ConfigKey, PluginConfig, RegisterError, ValueKind};

/// The keys.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey::new(
        "connect_timeout_ms",
        ValueKind::Integer { min: 100, max: 30_000 },
        "2000",
        "how long the relay waits for a business's media server to accept the socket before the caller hears the fallback",
    ),
    ConfigKey::new(
        "queue_frames",
        ValueKind::Integer { min: 5, max: 5_000 },
        "100",
        "media frames queued per direction (20 ms each) before the oldest are dropped: the most audio a slow side can lag",
    ),
    ConfigKey::new(
        "idle_timeout_secs",
        ValueKind::Integer { min: 1, max: 3_600 },
        "10",
        "seconds without a frame from Twilio after which a stream is closed (Twilio sends 50 a second)",
    ),
    ConfigKey::new(
        "max_streams",
        ValueKind::Integer { min: 1, max: 100_000 },
        "2000",
        "concurrent streams per instance; past it a stream is refused (503) before the upgrade",
    ),
    ConfigKey::new(
        "ca_file",
        ValueKind::OptionalPath,
        "",
        "a PEM bundle of CA certificates trusted for media servers in addition to the public roots (agents behind a private CA)",
    )
    .env("CALLPLANE_MEDIA_CA_FILE"),
];

/// The relay's settings, validated.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long a media server may take to accept the socket.
    pub connect_timeout: Duration,
    /// Media frames queued per direction.
    pub queue_frames: usize,
    /// How long Twilio's socket may stay silent.
    pub idle_timeout: Duration,
    /// Concurrent streams at most.
    pub max_streams: usize,
    /// TLS for `wss://` media servers: the public roots and the `ca_file` bundle.
    pub tls: Arc<rustls::ClientConfig>,
}

impl RelayConfig {
    /// The settings of `config`, the CA bundle read.
    ///
    /// # Errors
    /// A CA bundle that cannot be read or holds no certificate (`ca_file`).
    pub fn of(config: &PluginConfig) -> Result<Self, RegisterError> {
        let size = |key: &str| usize::try_from(config.integer(key)).unwrap_or(usize::MAX);
        Ok(Self {
            connect_timeout: Duration::from_millis(config.integer("connect_timeout_ms")),
            queue_frames: size("queue_frames"),
            idle_timeout: Duration::from_secs(config.integer("idle_timeout_secs")),
            max_streams: size("max_streams"),
            tls: Arc::new(tls(config.optional_path("ca_file").as_deref())?),
        })
    }
}

/// A TLS client trusting the public roots (webpki-roots) and the certificates of `ca_file`.
fn tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, RegisterError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let invalid = |message: String| RegisterError::Config {
            key: "media.ca_file".to_owned(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("{} holds no PEM certificate", path.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegisterError::Other(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_bad_ca_file_is_a_configuration_error() {
        let mut config = PluginConfig::defaults(KEYS);
        let relay = RelayConfig::of(&config).unwrap();
        assert_eq!(relay.connect_timeout, Duration::from_secs(2));
        assert_eq!(relay.queue_frames, 100);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        config.set("ca_file", missing.display().to_string());
        let Err(RegisterError::Config { key, message }) = RelayConfig::of(&config) else {
            panic!("a missing CA file is refused");
        };
        assert_eq!(key, "media.ca_file");
        assert!(message.contains("none.pem"), "{message}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        config.set("ca_file", empty.display().to_string());
        assert!(
            RelayConfig::of(&config).is_err(),
            "a file without certificates is refused"
        );
    }
}
