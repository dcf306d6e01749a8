//! Test PKI (rcgen, in memory), a policy, a recorder and a raw QUIC client that skips
//! the checks `ChannelEndpoint` does on its own certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sitrep_core::{Channel, NodeId};
use sitrep_net::{
    ChannelEndpoint, Direction, FrameRecorder, NetError, PeerPolicy, TlsIdentity, TransportLimits,
};
use sitrep_proto::v1::{Accepted, Envelope, Frame, Transfer, frame::Kind};
use time::OffsetDateTime;

/// Every test gives up after this long instead of hanging; nothing sleeps.
pub(crate) const GUARD: Duration = Duration::from_secs(20);

pub(crate) fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("test node ids are valid")
}

/// One channel CA.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} channel CA (test)"));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate()?)?,
        })
    }

    /// A node certificate as dev-pki makes it: URI and DNS SANs for `id`.
    pub(crate) fn node(&self, id: &str) -> anyhow::Result<TlsIdentity> {
        let id = node(id);
        self.with_sans(vec![
            SanType::URI(id.uri_san().try_into()?),
            SanType::DnsName(format!("{id}.sitrep.invalid").try_into()?),
        ])
    }

    /// A certificate with exactly these SANs.
    pub(crate) fn with_sans(&self, sans: Vec<SanType>) -> anyhow::Result<TlsIdentity> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "test node");
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            ca_pem: self.issuer.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    pub(crate) fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }
}

/// Allows the listed nodes, on any channel.
#[derive(Debug)]
pub(crate) struct Allow(pub(crate) Vec<String>);

impl PeerPolicy for Allow {
    fn check(&self, channel: Channel, peer: &NodeId) -> Result<(), String> {
        if self.0.iter().any(|p| p == peer.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "node {peer} is not a configured peer on channel {channel}"
            ))
        }
    }
}

/// One recorded frame: channel, direction, peer, wire bytes.
pub(crate) type Seen = (Channel, Direction, String, Vec<u8>);

/// Every frame seen, in order.
#[derive(Debug, Default)]
pub(crate) struct Recorder(pub(crate) Mutex<Vec<Seen>>);

impl FrameRecorder for Recorder {
    fn record(&self, channel: Channel, dir: Direction, peer: &NodeId, frame: &[u8]) {
        self.0
            .lock()
            .expect("recorder lock is never poisoned: nothing panics while holding it")
            .push((channel, dir, peer.to_string(), frame.to_vec()));
    }
}

pub(crate) fn bind(
    id: &str,
    identity: &TlsIdentity,
    allow: &[&str],
    limits: TransportLimits,
    recorder: Option<Arc<dyn FrameRecorder>>,
) -> Result<ChannelEndpoint, NetError> {
    let policy = Arc::new(Allow(allow.iter().map(|s| (*s).to_owned()).collect()));
    ChannelEndpoint::bind(
        Channel::Open,
        node(id),
        localhost(),
        identity,
        limits,
        policy,
        recorder,
    )
}

pub(crate) fn transfer(payload: usize) -> Frame {
    Frame {
        kind: Some(Kind::Transfer(Transfer {
            envelope: Envelope {
                sealed: vec![0x5a; payload],
                signature: vec![1; 64],
            }
            .encode_to_vec(),
            hop_count: 1,
            serves: vec!["b".into()],
        })),
    }
}

pub(crate) fn accepted(id: u8) -> Frame {
    Frame {
        kind: Some(Kind::Accepted(Accepted {
            message_id: vec![id; 16],
        })),
    }
}

/// A plain quinn client presenting `identity` without any of `ChannelEndpoint`'s checks
/// on it, connected to `addr` as server name `<server>.sitrep.invalid`.
pub(crate) async fn raw_connect(
    identity: &TlsIdentity,
    addr: SocketAddr,
    server: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&identity.ca_pem) {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_slice_iter(&identity.cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![sitrep_net::ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut endpoint = quinn::Endpoint::client(localhost())?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, &format!("{server}.sitrep.invalid"))?
        .await
        .context("raw client handshake")?;
    Ok((endpoint, conn))
}
