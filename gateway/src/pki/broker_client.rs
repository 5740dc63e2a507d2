//! The gateway's own client certificate for an external broker (`[broker.external]`), under a
//! CA of its own: the broker's gateway listener trusts only that CA, so no device certificate,
//! whatever its name, can connect there with the gateway's rights (deploy/mosquitto/).
//!
//! Files, beside the development PKI: `broker-client-ca.cert.pem`, `broker-client-ca.key.pem`,
//! `broker-client.cert.pem`, `broker-client.key.pem` (keys 0600).

use super::{random_serial, write_public, write_secret};
use anyhow::{bail, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// Makes the gateway-client CA and a client certificate whose common name is `name` (the
/// broker's user name for the gateway with `use_identity_as_username`).
pub fn issue(dir: &Path, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid {
        bail!("the gateway's broker name must be letters, digits, '-', '_' or '.'");
    }
    if dir.join("broker-client.key.pem").exists() {
        bail!(
            "{} already holds a broker client certificate; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "paygate development");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paygate development gateway-client CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    ca_params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    ca_params.serial_number = Some(random_serial());
    ca_params.key_identifier_method = KeyIdMethod::Sha256;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "paygate gateways");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(825);
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    write_public(
        &dir.join("broker-client-ca.cert.pem"),
        ca_cert.pem().as_bytes(),
    )?;
    write_secret(
        &dir.join("broker-client-ca.key.pem"),
        ca_key.serialize_pem().as_bytes(),
    )?;
    write_public(&dir.join("broker-client.cert.pem"), cert.pem().as_bytes())?;
    write_secret(
        &dir.join("broker-client.key.pem"),
        key.serialize_pem().as_bytes(),
    )?;
    Ok(())
}
