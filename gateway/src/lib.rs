//! The paygate gateway: the device front (TLS and the MQTT guard), the embedded broker, the
//! request pipeline, the store, the development PKI, configuration and the demo.

pub mod admission;
pub mod audit;
pub mod audit_outbox;
pub mod aws;
pub mod bench;
pub mod broker;
pub mod clock;
pub mod config;
pub mod crash;
pub mod demo;
pub mod descriptors;
pub mod durable;
pub mod front;
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod keys;
pub mod ledger;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod products;
pub mod profiles;
pub mod readiness;
pub mod rewards;
pub mod store;
pub mod tls;
pub mod upi;
pub mod upstream;
