//! A device's credentials as `paygate certs issue-device` writes them: the CA that signs the
//! gateway's certificate, the device's TLS certificate and key, its signing key, and the
//! gateway's receipt public key.

use anyhow::{bail, Context, Result};
use base64::Engine;
use paygate_core::envelope::{SigningAlgorithm, SigningKey, VerifyingKey};
use paygate_core::DeviceId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub struct DeviceBundle {
    pub dir: PathBuf,
    pub device_id: DeviceId,
    pub signing_key: SigningKey,
    pub gateway_key: VerifyingKey,
    pub gateway_key_id: String,
}

#[derive(Deserialize)]
struct EnrolmentFile {
    device_id: String,
    algorithm: String,
    #[allow(dead_code)]
    public_key: String,
    #[allow(dead_code)]
    wallet_id: String,
    #[allow(dead_code)]
    cert_serial: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedKey {
    key_id: String,
    algorithm: String,
    public_key: String,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl DeviceBundle {
    pub fn load(dir: &Path) -> Result<DeviceBundle> {
        let enrolment: EnrolmentFile = serde_json::from_slice(&read(&dir.join("enrolment.json"))?)?;
        let device_id = DeviceId::parse(&enrolment.device_id)?;
        let algorithm =
            SigningAlgorithm::parse(&enrolment.algorithm).context("unknown signing algorithm")?;
        let signing_key = SigningKey::from_pkcs8(
            algorithm,
            device_id.as_str(),
            &read(&dir.join("signing.pk8"))?,
        )?;
        let published: PublishedKey =
            serde_json::from_slice(&read(&dir.join("gateway-receipt.pub.json"))?)?;
        let gateway_key = VerifyingKey {
            algorithm: SigningAlgorithm::parse(&published.algorithm)
                .context("unknown gateway key algorithm")?,
            public_key: base64::engine::general_purpose::STANDARD.decode(&published.public_key)?,
        };
        Ok(DeviceBundle {
            dir: dir.to_path_buf(),
            device_id,
            signing_key,
            gateway_key,
            gateway_key_id: published.key_id,
        })
    }

    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        let pem = read(&self.dir.join("ca.cert.pem"))?;
        Ok(CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?)
    }

    pub fn client_cert_chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        let pem = read(&self.dir.join("device.cert.pem"))?;
        Ok(CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?)
    }

    pub fn client_key(&self) -> Result<PrivateKeyDer<'static>> {
        let pem = read(&self.dir.join("device.key.pem"))?;
        match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(key) => Ok(key),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => bail!("device.key.pem holds no key"),
            Err(error) => Err(error).context("parsing device.key.pem"),
        }
    }
}
