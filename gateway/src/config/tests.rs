use super::*;

#[test]
fn the_printed_default_file_is_exactly_the_defaults() {
    let from_file: Settings = Figment::new()
        .merge(Toml::string(DEFAULT_FILE))
        .extract()
        .expect("default file parses");
    assert_eq!(from_file, Settings::default());
    assert!(Settings::default().validate().is_ok());
}

#[test]
// figment's Jail closure must return figment's own (large) error type
#[allow(clippy::result_large_err)]
fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "paygate.toml",
            "data_dir = \"/srv/paygate\"\n[mqtt]\nlisten = \"0.0.0.0:8883\"\npacket_bytes_max = 4096\n",
        )?;
        jail.set_env("PAYGATE__MQTT__PACKET_BYTES_MAX", "8192");
        let settings =
            Settings::load(Some(Path::new("paygate.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(settings.data_dir, PathBuf::from("/srv/paygate"));
        assert_eq!(
            settings.mqtt.listen,
            "0.0.0.0:8883"
                .parse::<SocketAddr>()
                .map_err(|e| e.to_string())?
        );
        assert_eq!(settings.mqtt.packet_bytes_max, 8192);
        assert_eq!(settings.pipeline, PipelineSettings::default());
        jail.set_env("PAYGATE__MQTT__PACKET_BYTES_MAX", "1");
        assert!(matches!(
            Settings::load(Some(Path::new("paygate.toml"))),
            Err(ConfigError::Invalid {
                field: "mqtt.packet_bytes_max",
                ..
            })
        ));
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn secrets_come_from_the_environment_or_a_file_and_never_print() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("db-url", "sqlite://from-file.db?password=hunter2\n")?;
        jail.create_file("a.toml", "[database]\nurl = \"file:db-url\"\n")?;
        let settings = Settings::load(Some(Path::new("a.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(
            settings.database_url(),
            "sqlite://from-file.db?password=hunter2"
        );
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("url: ***"));
        jail.set_env("PAYGATE_TEST_DB", "sqlite://from-env.db?password=swordfish");
        jail.create_file("b.toml", "[database]\nurl = \"env:PAYGATE_TEST_DB\"\n")?;
        let settings = Settings::load(Some(Path::new("b.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(
            settings.database_url(),
            "sqlite://from-env.db?password=swordfish"
        );
        assert!(!format!("{settings:?}").contains("swordfish"));
        jail.create_file(
            "c.toml",
            "[database]\nurl = \"env:PAYGATE_NOT_SET_ANYWHERE\"\n",
        )?;
        assert!(matches!(
            Settings::load(Some(Path::new("c.toml"))),
            Err(ConfigError::Invalid {
                field: "database.url",
                ..
            })
        ));
        Ok(())
    });
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let unknown: Result<Settings, _> = Figment::from(Serialized::defaults(Settings::default()))
        .merge(Toml::string("[mqtt]\nlisten_port = 1\n"))
        .extract();
    assert!(unknown.is_err());
    let mut settings = Settings::default();
    settings.pipeline.batch_size_max = 0;
    assert!(matches!(
        settings.validate(),
        Err(ConfigError::Invalid {
            field: "pipeline.batch_size_max",
            ..
        })
    ));
    for (field, change) in [
        (
            "mqtt.device_requests_per_s",
            (|s: &mut Settings| s.mqtt.device_requests_per_s = 0) as fn(&mut Settings),
        ),
        ("mqtt.device_requests_burst", |s| {
            s.mqtt.device_requests_burst = 0
        }),
        ("mqtt.device_inflight_max", |s| {
            s.mqtt.device_inflight_max = s.pipeline.queue_depth_max + 1
        }),
        ("mqtt.device_inflight_max", |s| {
            s.mqtt.device_inflight_max = 0
        }),
        ("mqtt.outbound_queue_packets_max", |s| {
            s.mqtt.outbound_queue_packets_max = 2 * s.mqtt.device_inflight_max + 7
        }),
        ("mqtt.inflight_timeout_ms", |s| {
            s.mqtt.inflight_timeout_ms = 10
        }),
        ("pipeline.queue_depth_max", |s| {
            s.pipeline.queue_depth_max = (1 << 20) + 1
        }),
    ] {
        let mut settings = Settings::default();
        change(&mut settings);
        match settings.validate() {
            Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let mut settings = Settings::default();
    settings.database.url = Secret::new("mysql://x");
    assert!(settings.validate().is_err());
    settings.database.url = Secret::new("postgres://paygate@127.0.0.1/paygate");
    assert!(settings.validate().is_ok());
    // audit retention can be raised, never set below a year (PCI DSS 10.5.1)
    let mut settings = Settings::default();
    settings.audit.s3.retention_days = 364;
    assert!(matches!(
        settings.validate(),
        Err(ConfigError::Invalid {
            field: "audit.s3.retention_days",
            ..
        })
    ));
    settings.audit.s3.retention_days = 3650;
    assert!(settings.validate().is_ok());
    settings.audit.local.retention_days = 30;
    assert!(settings.validate().is_err());
    let mut settings = Settings::default();
    settings.audit.store = AuditStoreKind::S3;
    assert!(matches!(
        settings.validate(),
        Err(ConfigError::Invalid {
            field: "audit.s3.bucket",
            ..
        })
    ));
    // the witness is never the audit store under another spelling, nor inside it
    let data_dir = std::path::PathBuf::from("/srv/paygate");
    for dir in [
        "audit/worm",
        "./audit/worm",
        "/srv/paygate/audit/worm",
        "audit/worm/witness",
        "audit",
        "audit/x/../worm",
    ] {
        let mut settings = Settings {
            data_dir: data_dir.clone(),
            ..Settings::default()
        };
        settings.audit.witness.store = WitnessStoreKind::Local;
        settings.audit.witness.local.dir = dir.into();
        assert!(
            matches!(
                settings.validate(),
                Err(ConfigError::Invalid {
                    field: "audit.witness.local.dir",
                    ..
                })
            ),
            "{dir}"
        );
    }
    let mut settings = Settings::default();
    settings.audit.witness.store = WitnessStoreKind::Local;
    assert!(settings.validate().is_ok(), "the default witness directory");
    for prefix in ["paygate-audit/", "paygate-audit", "paygate-audit/witness/"] {
        let mut settings = Settings::default();
        settings.audit.store = AuditStoreKind::S3;
        settings.audit.s3.bucket = "audit".into();
        settings.audit.witness.store = WitnessStoreKind::S3;
        settings.audit.witness.s3.bucket = "audit".into();
        settings.audit.witness.s3.prefix = prefix.into();
        assert!(settings.validate().is_err(), "{prefix}");
    }
}

#[test]
fn external_broker_mode_needs_a_secret_share_group_and_sane_limits() {
    use super::BrokerMode;
    let external = || {
        let mut settings = Settings::default();
        settings.broker.mode = BrokerMode::External;
        settings.broker.external.share_group = Secret::new("0123456789abcdef0123");
        settings
    };
    assert!(external().validate().is_ok());
    // the embedded default needs none of it
    assert!(Settings::default().validate().is_ok());
    for (field, change) in [
        (
            "broker.external.share_group",
            (|s: &mut Settings| s.broker.external.share_group = Secret::default())
                as fn(&mut Settings),
        ),
        ("broker.external.share_group", |s| {
            s.broker.external.share_group = Secret::new("paygate")
        }),
        ("broker.external.share_group", |s| {
            s.broker.external.share_group = Secret::new("0123456789abcdef/#")
        }),
        ("broker.external.client_id", |s| {
            s.broker.external.client_id = "a/b".into()
        }),
        ("broker.external.inflight_max", |s| {
            s.broker.external.inflight_max = s.pipeline.queue_depth_max + 1
        }),
        ("broker.external.inflight_max", |s| {
            s.broker.external.inflight_max = 0
        }),
        ("broker.external.keep_alive_s", |s| {
            s.broker.external.keep_alive_s = 1
        }),
        ("broker.external.host", |s| s.broker.external.host.clear()),
    ] {
        let mut settings = external();
        change(&mut settings);
        match settings.validate() {
            Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}
