//! The development PKI behind `paygate certs`: a CA, the gateway's server certificate, the
//! gateway's receipt-signing key, device bundles and a CRL. Production deployments bring their
//! own CAs and CRLs (any number, see `tls.client_ca_bundles` and `tls.crls`); this module is for
//! development, tests and the demo. X.509 and CRL encoding is rcgen's.
//!
//! Layout of a PKI directory:
//! ```text
//! ca.cert.pem  ca.key.pem  server.cert.pem  server.key.pem  crl.pem  revoked.json
//! receipt-signing.pk8  receipt-signing.pub.json
//! devices/{id}/  ca.cert.pem device.cert.pem device.key.pem signing.pk8
//!                gateway-receipt.pub.json enrolment.json
//! broker-client-ca.cert.pem  broker-client.cert.pem  broker-client.key.pem  (external broker)
//! ```

pub mod broker_client;
pub mod dev_issuer;

use anyhow::{bail, Context, Result};
use base64::Engine;
use paygate_core::envelope::{SigningAlgorithm, SigningKey, VerifyingKey};
use paygate_core::{AccountId, DeviceId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The URI SAN that carries a device id in a paygate device certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:paygate:device:";

/// A device's public signing key and its wallet, as the gateway enrols it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub device_id: String,
    pub algorithm: String,
    /// Base64 (standard, padded) of the raw public key.
    pub public_key: String,
    pub wallet_id: String,
    /// Hex serial of the device's TLS client certificate.
    pub cert_serial: String,
}

/// A public key from its algorithm name and base64 (standard, padded) raw bytes.
fn decode_verifying_key(algorithm: &str, public_key_base64: &str) -> Result<VerifyingKey> {
    let algorithm = SigningAlgorithm::parse(algorithm)
        .with_context(|| format!("unknown algorithm {algorithm:?}"))?;
    let public_key = base64::engine::general_purpose::STANDARD
        .decode(public_key_base64)
        .context("public key is not base64")?;
    Ok(VerifyingKey {
        algorithm,
        public_key,
    })
}

impl Enrolment {
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        decode_verifying_key(&self.algorithm, &self.public_key)
    }
}

/// The gateway's receipt public key, as shipped to devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedKey {
    pub key_id: String,
    pub algorithm: String,
    pub public_key: String,
}

impl PublishedKey {
    pub fn of(key: &SigningKey) -> PublishedKey {
        let verifying = key.verifying_key();
        PublishedKey {
            key_id: key.key_id().to_owned(),
            algorithm: key.algorithm().name().to_owned(),
            public_key: base64::engine::general_purpose::STANDARD.encode(verifying.public_key),
        }
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        decode_verifying_key(&self.algorithm, &self.public_key)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationList {
    crl_number: u64,
    revoked: Vec<Revoked>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoked {
    device_id: String,
    cert_serial: String,
    revoked_at: String,
}

/// Writes a file readable by its owner only (keys).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The CA of the PKI in `dir`, to sign with: its certificate and key.
pub fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair)> {
    let cert_pem = std::fs::read_to_string(dir.join("ca.cert.pem"))
        .context("reading ca.cert.pem: run `paygate certs init` first")?;
    let key_pem = std::fs::read_to_string(dir.join("ca.key.pem")).context("reading ca.key.pem")?;
    let key = KeyPair::from_pem(&key_pem).context("parsing ca.key.pem")?;
    let params = CertificateParams::from_ca_cert_pem(&cert_pem).context("parsing ca.cert.pem")?;
    // re-signing the parsed parameters gives an issuer with the same name and key
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// Whether `dir` already holds an initialised PKI.
pub fn is_initialised(dir: &Path) -> bool {
    dir.join("ca.cert.pem").exists() && dir.join("receipt-signing.pk8").exists()
}

/// Makes the CA, the server certificate (for `server_names`), the receipt key, an empty CRL,
/// and the development token issuer of the HTTP API.
pub fn init(dir: &Path, server_names: &[String], receipt_key_id: &str) -> Result<()> {
    if dir.join("ca.key.pem").exists() {
        bail!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("devices"))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::OrganizationName, "paygate development");
    ca_name.push(DnType::CommonName, "paygate development device CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    ca_params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    ca_params.serial_number = Some(random_serial());
    ca_params.key_identifier_method = KeyIdMethod::Sha256;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_public(&dir.join("ca.cert.pem"), ca_cert.pem().as_bytes())?;
    write_secret(&dir.join("ca.key.pem"), ca_key.serialize_pem().as_bytes())?;

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(Vec::<String>::new())?;
    for name in server_names {
        server_params
            .subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
    }
    server_params
        .distinguished_name
        .push(DnType::CommonName, "paygate gateway");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.serial_number = Some(random_serial());
    server_params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    server_params.not_after = OffsetDateTime::now_utc() + Duration::days(825);
    let server_cert = server_params.signed_by(&server_key, &ca_cert, &ca_key)?;
    write_public(&dir.join("server.cert.pem"), server_cert.pem().as_bytes())?;
    write_secret(
        &dir.join("server.key.pem"),
        server_key.serialize_pem().as_bytes(),
    )?;

    let receipt_pkcs8 = SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519)?;
    let receipt_key =
        SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, receipt_key_id, &receipt_pkcs8)?;
    write_secret(&dir.join("receipt-signing.pk8"), &receipt_pkcs8)?;
    write_public(
        &dir.join("receipt-signing.pub.json"),
        &serde_json::to_vec_pretty(&PublishedKey::of(&receipt_key))?,
    )?;

    write_crl(dir, &ca_cert, &ca_key, &RevocationList::default())?;
    dev_issuer::init(dir)?;
    Ok(())
}

fn write_crl(
    dir: &Path,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    list: &RevocationList,
) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::with_capacity(list.revoked.len());
    for entry in &list.revoked {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&hex::decode(&entry.cert_serial)?),
            revocation_time: now,
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(30),
        crl_number: SerialNumber::from_slice(&list.crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(ca_cert, ca_key)?;
    write_public(&dir.join("crl.pem"), crl.pem()?.as_bytes())?;
    write_public(&dir.join("revoked.json"), &serde_json::to_vec_pretty(list)?)?;
    Ok(())
}

/// The bundle directory of one device.
pub fn device_dir(dir: &Path, device: &DeviceId) -> PathBuf {
    dir.join("devices").join(device.as_str())
}

/// Issues a device: TLS key and client certificate (clientAuth EKU, the device id as CN and
/// as a `urn:paygate:device:` URI SAN), a signing key, and the enrolment record.
pub fn issue_device(
    dir: &Path,
    device: &DeviceId,
    wallet: &AccountId,
    algorithm: SigningAlgorithm,
) -> Result<Enrolment> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let out = device_dir(dir, device);
    if out.join("device.key.pem").exists() {
        bail!("device {device} already has a bundle in {}", out.display());
    }
    std::fs::create_dir_all(&out)?;

    let tls_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "paygate devices");
    params
        .distinguished_name
        .push(DnType::CommonName, device.as_str());
    params.subject_alt_names = vec![SanType::URI(
        format!("{DEVICE_URI_PREFIX}{device}").try_into()?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(825);
    let cert = params.signed_by(&tls_key, &ca_cert, &ca_key)?;

    let signing_pkcs8 = SigningKey::generate_pkcs8(algorithm)?;
    let signing_key = SigningKey::from_pkcs8(algorithm, device.as_str(), &signing_pkcs8)?;
    let enrolment = Enrolment {
        device_id: device.to_string(),
        algorithm: algorithm.name().to_owned(),
        public_key: base64::engine::general_purpose::STANDARD
            .encode(signing_key.verifying_key().public_key),
        wallet_id: wallet.to_string(),
        cert_serial: hex::encode(serial.to_bytes()),
    };

    std::fs::copy(dir.join("ca.cert.pem"), out.join("ca.cert.pem"))?;
    std::fs::copy(
        dir.join("receipt-signing.pub.json"),
        out.join("gateway-receipt.pub.json"),
    )?;
    write_public(&out.join("device.cert.pem"), cert.pem().as_bytes())?;
    write_secret(
        &out.join("device.key.pem"),
        tls_key.serialize_pem().as_bytes(),
    )?;
    write_secret(&out.join("signing.pk8"), &signing_pkcs8)?;
    write_public(
        &out.join("enrolment.json"),
        &serde_json::to_vec_pretty(&enrolment)?,
    )?;
    Ok(enrolment)
}

/// Revokes a device's certificate and rewrites the CRL. The gateway reads CRLs at start.
pub fn revoke_device(dir: &Path, device: &DeviceId) -> Result<()> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let enrolment = read_enrolment(&device_dir(dir, device).join("enrolment.json"))?;
    let mut list: RevocationList = match std::fs::read(dir.join("revoked.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => RevocationList::default(),
    };
    list.crl_number = list
        .crl_number
        .checked_add(1)
        .context("crl number overflow")?;
    list.revoked.push(Revoked {
        device_id: device.to_string(),
        cert_serial: enrolment.cert_serial,
        revoked_at: OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
    });
    write_crl(dir, &ca_cert, &ca_key, &list)
}

pub fn read_enrolment(path: &Path) -> Result<Enrolment> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
