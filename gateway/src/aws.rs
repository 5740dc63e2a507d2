//! The one way paygate talks to AWS (KMS for keys, S3 Object Lock for the audit archive).
//!
//! The SDK is built without its default HTTPS client, which would compile in a second crypto
//! library (aws-lc) and, through its legacy client, rustls 0.21 with a rustls-webpki that has
//! open advisories (`deny.toml`). Every AWS client, in the gateway, its tests and its benches,
//! starts from [`defaults`], which hands the SDK an HTTPS client on rustls 0.23 with ring: the
//! same TLS stack and crypto library as the device front.

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// An HTTPS client for the AWS SDK on rustls with ring. It trusts the platform's roots, like
/// the SDK's own default client.
pub fn https_client() -> aws_sdk_kms::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// `aws_config::defaults` with paygate's HTTPS client: the standard credential and region
/// chain (environment, profile, web identity, container and instance metadata), unchanged.
pub fn defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}
