//! Per-channel mutual TLS: the identity files, the rustls configurations and the node id
//! bound into a certificate's URI SAN.
//!
//! rustls checks the chain to the channel CA, validity and key usage; it checks no name
//! binding for clients and no URI SANs at all. We read the node id from the end-entity
//! certificate after the handshake, before any stream is read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sitrep_core::NodeId;
use sitrep_core::id::URI_SAN_PREFIX;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::NetError;

/// ALPN protocol id of hop protocol version 1. A peer that does not offer it fails the
/// handshake.
pub const ALPN: &[u8] = b"sitrep/1";

/// PEM bytes for one channel: the channel CA certificate, this node's certificate chain
/// (end-entity first) and its private key.
///
/// `Debug` shows sizes, never the key; the key bytes are zeroed on drop.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The channel CA certificate(s): the only trust anchors on this channel.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain for the channel, end-entity first.
    pub cert_pem: Vec<u8>,
    /// This node's private key for the channel (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl Drop for TlsIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
    }
}

/// Which part of an identity a parse problem is in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Ca,
    Cert,
    Key,
}

/// An identity parsed into what rustls takes.
pub(crate) struct Parsed {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// The node id in this node's own certificate.
    pub(crate) node: NodeId,
}

impl TlsIdentity {
    /// Reads and checks the three PEM files of one channel.
    ///
    /// # Errors
    /// [`NetError::Certificate`] naming the file that cannot be read, holds no
    /// certificate or key, or whose certificate does not name exactly one node.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, NetError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| NetError::Certificate {
                file: path.to_path_buf(),
                problem: format!("cannot read: {e}"),
            })
        };
        let identity = Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        identity
            .parse()
            .map_err(|(part, problem)| NetError::Certificate {
                file: PathBuf::from(match part {
                    Part::Ca => ca,
                    Part::Cert => cert,
                    Part::Key => key,
                }),
                problem,
            })?;
        Ok(identity)
    }

    /// Parses the PEM bytes; the error names the part at fault.
    pub(crate) fn parse(&self) -> Result<Parsed, (Part, String)> {
        let cas = CertificateDer::pem_slice_iter(&self.ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (Part::Ca, format!("not PEM certificates: {e}")))?;
        if cas.is_empty() {
            return Err((Part::Ca, "holds no PEM certificate".into()));
        }
        let mut roots = RootCertStore::empty();
        for (i, ca) in cas.into_iter().enumerate() {
            // `add`, not `add_parsable_certificates`: a CA file with a bad certificate is
            // refused, never silently trimmed.
            roots.add(ca).map_err(|e| {
                (
                    Part::Ca,
                    format!("certificate #{} is not a usable CA: {e}", i + 1),
                )
            })?;
        }
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (Part::Cert, format!("not PEM certificates: {e}")))?;
        let node = match chain.first() {
            None => return Err((Part::Cert, "holds no PEM certificate".into())),
            Some(ee) => node_id_of(ee).map_err(|e| (Part::Cert, e))?,
        };
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| (Part::Key, format!("holds no usable PEM private key: {e}")))?;
        Ok(Parsed {
            roots: Arc::new(roots),
            chain,
            key,
            node,
        })
    }
}

/// The end of validity (`notAfter`) of the first certificate in a PEM file, in
/// milliseconds since the Unix epoch. For a chain file that is the end-entity
/// certificate. The node reports it so that operators see a certificate expire before
/// its peers start refusing it.
///
/// # Errors
/// [`NetError::Certificate`] naming the file if it cannot be read, holds no PEM
/// certificate, or its first certificate is not X.509.
pub fn certificate_not_after_ms(path: &Path) -> Result<i64, NetError> {
    let problem = |problem: String| NetError::Certificate {
        file: path.to_path_buf(),
        problem,
    };
    let der = CertificateDer::from_pem_file(path).map_err(|e| {
        problem(match e {
            pem::Error::Io(e) => format!("cannot read: {e}"),
            pem::Error::NoItemsFound => "holds no PEM certificate".to_owned(),
            other => format!("not PEM: {other}"),
        })
    })?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| problem(format!("certificate does not parse: {e}")))?;
    Ok(cert.validity().not_after.timestamp().saturating_mul(1000))
}

/// The crypto provider: ring, explicitly, so no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl FnOnce(rustls::Error) -> NetError + '_ {
    move |e| NetError::Tls(format!("{what}: {e}"))
}

/// Server side: TLS 1.3 only, client certificates required and verified against the
/// channel CA alone, no resumption, no 0-RTT.
pub(crate) fn server_config(p: &Parsed) -> Result<quinn::crypto::rustls::QuicServerConfig, NetError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(p.roots.clone(), provider.clone())
        .build()
        .map_err(|e| NetError::Tls(format!("client certificate verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 with the ring provider"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(p.chain.clone(), p.key.clone_key())
        .map_err(tls_err("this node's certificate and key"))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT (DESIGN §5 property 8): early data is replayable.
    config.max_early_data_size = 0;
    // No resumption: every connection presents and verifies a full certificate chain,
    // so a certificate that expires or is removed stops working at the next connection.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .map_err(|e| NetError::Tls(format!("QUIC server configuration: {e}")))
}

/// Client side: TLS 1.3 only, the server verified against the channel CA alone, our
/// certificate presented, no resumption, no 0-RTT.
pub(crate) fn client_config(p: &Parsed) -> Result<quinn::crypto::rustls::QuicClientConfig, NetError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(p.roots.clone(), provider.clone())
        .build()
        .map_err(|e| NetError::Tls(format!("server certificate verifier: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 with the ring provider"))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(p.chain.clone(), p.key.clone_key())
        .map_err(tls_err("this node's certificate and key"))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|e| NetError::Tls(format!("QUIC client configuration: {e}")))
}

/// The DNS name a node's certificate carries, which the client verifies as server name.
pub(crate) fn server_name(node: &NodeId) -> String {
    format!("{node}.sitrep.invalid")
}

/// The node id of the peer on a handshaken connection, from its end-entity certificate.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Result<NodeId, String> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| "the peer presented no certificate".to_owned())?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer identity is not an X.509 certificate chain".to_owned())?;
    let ee = chain
        .first()
        .ok_or_else(|| "the peer presented an empty certificate chain".to_owned())?;
    node_id_of(ee)
}

/// The one node id in a certificate's `urn:sitrep:node:` URI SANs.
pub(crate) fn node_id_of(der: &CertificateDer<'_>) -> Result<NodeId, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("certificate subjectAltName does not parse: {e}"))?;
    let ours: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_SAN_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match ours.as_slice() {
        [] => Err(format!("certificate has no {URI_SAN_PREFIX}<id> URI SAN")),
        [uri] => NodeId::from_uri_san(uri).ok_or_else(|| {
            format!(
                "certificate URI SAN {:?} holds no valid node id",
                uri.escape_default()
            )
        }),
        many => Err(format!(
            "certificate names {} nodes in {URI_SAN_PREFIX} URI SANs; exactly one is allowed",
            many.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let id = TlsIdentity {
            ca_pem: b"ca".to_vec(),
            cert_pem: b"cert".to_vec(),
            key_pem: b"-----BEGIN PRIVATE KEY-----secret".to_vec(),
        };
        let shown = format!("{id:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn empty_pem_names_the_part() {
        let id = TlsIdentity {
            ca_pem: Vec::new(),
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
        };
        assert!(matches!(id.parse(), Err((Part::Ca, _))));
    }

    /// A self-signed certificate valid until `not_after`, as PEM.
    fn certificate_until(not_after: time::OffsetDateTime) -> String {
        let mut p = rcgen::CertificateParams::new(vec!["t.sitrep.invalid".to_owned()]).expect("valid SAN");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = not_after;
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("certificate").pem()
    }

    #[test]
    fn not_after_is_read_to_the_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 2030-01-02T03:04:05Z (UTCTime) and 2051-03-04T05:06:07Z (GeneralizedTime:
        // X.509 switches encodings from 2050 on).
        for secs in [1_893_553_445_i64, 2_561_519_167] {
            let at = time::OffsetDateTime::from_unix_timestamp(secs).expect("in range");
            let path = dir.path().join(format!("{secs}.crt"));
            std::fs::write(&path, certificate_until(at)).expect("write");
            assert_eq!(certificate_not_after_ms(&path).expect("parses"), secs * 1000);
        }
    }

    #[test]
    fn not_after_of_a_chain_is_the_first_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ee = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("in range");
        let ca = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).expect("in range");
        let path = dir.path().join("chain.crt");
        std::fs::write(&path, certificate_until(ee) + &certificate_until(ca)).expect("write");
        assert_eq!(
            certificate_not_after_ms(&path).expect("parses"),
            1_900_000_000_000
        );
    }

    #[test]
    fn not_after_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.crt");
        let e = certificate_not_after_ms(&missing).expect_err("no file");
        assert!(
            matches!(&e, NetError::Certificate { file, problem }
                if *file == missing && problem.starts_with("cannot read")),
            "{e}"
        );

        let key = dir.path().join("node.key");
        std::fs::write(&key, rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("write");
        let e = certificate_not_after_ms(&key).expect_err("a key is no certificate");
        assert!(
            matches!(&e, NetError::Certificate { file, problem }
                if *file == key && problem == "holds no PEM certificate"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.crt");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = certificate_not_after_ms(&garbage).expect_err("not X.509");
        assert!(
            matches!(&e, NetError::Certificate { file, problem }
                if *file == garbage && problem.starts_with("certificate does not parse")),
            "{e}"
        );
        assert!(e.to_string().contains("garbage.crt"), "{e}");
    }

    #[test]
    fn server_name_is_the_dns_san() {
        let node = NodeId::new("region-uppsala").expect("valid id");
        assert_eq!(server_name(&node), "region-uppsala.sitrep.invalid");
    }
}
