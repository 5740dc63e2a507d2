//! TLS for the device front: rustls with TLS 1.2 and 1.3 only, client certificates required
//! and verified against every CA in the configured bundles, with CRLs.

use crate::config::Settings;
use crate::pki::DEVICE_URI_PREFIX;
use anyhow::{bail, Context, Result};
use paygate_core::{DeviceId, ErrorCode};
use rustls::crypto::ring as provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            bail!("{} holds no private key", path.display())
        }
        Err(error) => Err(error).with_context(|| format!("parsing key in {}", path.display())),
    }
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = read_pem(path)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing CRLs in {}", path.display()))
}

/// Builds the server configuration from the settings (all CAs of all bundles, all CRLs).
pub fn server_config(settings: &Settings) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(provider::default_provider());
    let mut roots = RootCertStore::empty();
    for bundle in &settings.tls.client_ca_bundles {
        for ca in load_certs(&settings.resolve(bundle))? {
            roots
                .add(ca)
                .with_context(|| format!("adding a CA from {}", bundle.display()))?;
        }
    }
    let mut crls = Vec::new();
    for path in &settings.tls.crls {
        crls.extend(load_crls(&settings.resolve(path))?);
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls);
    if settings.tls.allow_unknown_revocation_status {
        verifier = verifier.allow_unknown_revocation_status();
    }
    let verifier = verifier
        .build()
        .context("building the client certificate verifier")?;
    let chain = load_certs(&settings.resolve(&settings.tls.server_cert))?;
    let key = load_key(&settings.resolve(&settings.tls.server_key))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the server certificate and key")?;
    Ok(Arc::new(config))
}

/// The HTTP API's server configuration: the same certificate, TLS 1.2 and 1.3, no client
/// certificate (callers present bearer tokens), HTTP/1.1 by ALPN.
pub fn http_server_config(settings: &Settings) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(provider::default_provider());
    let chain = load_certs(&settings.resolve(&settings.tls.server_cert))?;
    let key = load_key(&settings.resolve(&settings.tls.server_key))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("loading the server certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The device id a verified client certificate names: its `urn:paygate:device:` URI SAN, or
/// failing that its subject CN. Either must be a valid device id.
///
/// The certificate must say it is for client authentication (an extended key usage with
/// `id-kp-clientAuth`): webpki accepts a certificate with no extended key usage at all for
/// any purpose, and a device certificate is only ever issued with it (`pki::issue_device`), so
/// one without it is not a device's.
pub fn device_identity(cert: &CertificateDer<'_>) -> Result<DeviceId, ErrorCode> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| ErrorCode::DeviceIdInvalid)?;
    let for_client_auth = matches!(
        parsed.extended_key_usage(),
        Ok(Some(usage)) if usage.value.client_auth
    );
    if !for_client_auth {
        return Err(ErrorCode::TlsCertUntrusted);
    }
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(DEVICE_URI_PREFIX) {
                    return DeviceId::parse(id).map_err(|_| ErrorCode::DeviceIdInvalid);
                }
            }
        }
    }
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(ErrorCode::DeviceIdInvalid)?;
    DeviceId::parse(common_name).map_err(|_| ErrorCode::DeviceIdInvalid)
}

/// The stable code for a failed handshake.
pub fn classify_handshake_error(error: &std::io::Error) -> ErrorCode {
    use rustls::{CertificateError, Error as TlsError};
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::NoCertificatesPresented) => ErrorCode::TlsClientCertRequired,
        Some(TlsError::InvalidCertificate(CertificateError::Revoked)) => ErrorCode::TlsCertRevoked,
        Some(TlsError::InvalidCertificate(_)) => ErrorCode::TlsCertUntrusted,
        _ => ErrorCode::TlsHandshakeFailed,
    }
}
