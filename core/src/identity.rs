//! Identity validation, the pure part: the rule manager (which mechanisms a transaction needs,
//! from rules that are data), validate-pass (what the customer passed recently is not asked
//! again), and the one-time-password algorithms (RFC 4226 HOTP, RFC 6238 TOTP, through the
//! totp-rs crate). The gateway supplies the "completeness" data and keeps the state.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An identification mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// The request's own signature by the device key: always present, never asked.
    DevicePossession,
    /// A time-based code from the holder's authenticator (RFC 6238).
    Totp,
    /// The holder's PIN (stored as an Argon2id hash).
    Pin,
    /// A one-time code sent out of band (SMS, push) for this challenge.
    Oob,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::DevicePossession => "device_possession",
            Mechanism::Totp => "totp",
            Mechanism::Pin => "pin",
            Mechanism::Oob => "oob",
        }
    }

    pub fn parse(text: &str) -> Option<Mechanism> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

/// When a rule applies. Every condition given must hold; an empty condition always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Condition {
    pub amount_minor_min: Option<i64>,
    pub amount_minor_max: Option<i64>,
    pub currency: Option<String>,
    /// The wallet has never paid this payee before.
    pub first_payee: Option<bool>,
    /// The device has never had a request decided before.
    pub first_device_use: Option<bool>,
    /// The device's decided requests in the last `identity.velocity_window_ms` reach this.
    pub payments_in_window_min: Option<u32>,
    /// Paid since the wallet's last strong authentication (any mechanism but possession).
    pub cumulative_minor_since_strong_auth_min: Option<i64>,
    /// Local hours `[from, to)` in the business time zone (the one the KYC limits reset in,
    /// `wallet.limits_utc_offset_minutes`), wrapping midnight when `from > to`.
    pub hour_from: Option<u8>,
    pub hour_to: Option<u8>,
    pub payee_in: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub risk: RiskLevel,
    pub require: Vec<Mechanism>,
    #[serde(default)]
    pub when: Condition,
}

/// How long a passed mechanism spares the customer from being asked again, per risk level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassWindow {
    pub mechanism: Mechanism,
    pub risk: RiskLevel,
    pub window_ms: u64,
}

/// What the gateway knows about a transaction when it decides (the seed's "completeness").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completeness {
    pub amount_minor: i64,
    pub currency: String,
    pub payee: String,
    pub first_payee: bool,
    pub first_device_use: bool,
    pub payments_in_window: u32,
    pub cumulative_minor_since_strong_auth: i64,
    /// The hour of the day in the business time zone.
    pub hour_local: u8,
    /// How long ago the wallet last passed each mechanism.
    pub passed_ms_ago: Vec<(Mechanism, u64)>,
}

/// A mechanism the transaction needs, the highest risk that asks for it, and the rules that did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub mechanism: Mechanism,
    pub risk: RiskLevel,
    pub rules: Vec<String>,
}

impl Condition {
    pub fn holds(&self, c: &Completeness) -> bool {
        let hour_ok = match (self.hour_from, self.hour_to) {
            (Some(from), Some(to)) if from <= to => (from..to).contains(&c.hour_local),
            (Some(from), Some(to)) => c.hour_local >= from || c.hour_local < to,
            (Some(from), None) => c.hour_local >= from,
            (None, Some(to)) => c.hour_local < to,
            (None, None) => true,
        };
        self.amount_minor_min
            .is_none_or(|min| c.amount_minor >= min)
            && self
                .amount_minor_max
                .is_none_or(|max| c.amount_minor <= max)
            && self.currency.as_ref().is_none_or(|cur| *cur == c.currency)
            && self.first_payee.is_none_or(|want| want == c.first_payee)
            && self
                .first_device_use
                .is_none_or(|want| want == c.first_device_use)
            && self
                .payments_in_window_min
                .is_none_or(|min| c.payments_in_window >= min)
            && self
                .cumulative_minor_since_strong_auth_min
                .is_none_or(|min| c.cumulative_minor_since_strong_auth >= min)
            && hour_ok
            && self
                .payee_in
                .as_ref()
                .is_none_or(|payees| payees.contains(&c.payee))
    }
}

/// The rule manager: every mechanism the matching rules require, at the highest risk any of
/// them gives it, minus device possession (always present) and minus what the customer passed
/// within the pass window for that mechanism and risk (validate pass). Sorted by mechanism.
pub fn required_mechanisms(
    rules: &[Rule],
    pass_windows: &[PassWindow],
    completeness: &Completeness,
) -> Vec<Requirement> {
    let mut needed: Vec<Requirement> = Vec::new();
    for rule in rules.iter().filter(|r| r.when.holds(completeness)) {
        for &mechanism in &rule.require {
            if mechanism == Mechanism::DevicePossession {
                continue;
            }
            match needed.iter_mut().find(|r| r.mechanism == mechanism) {
                Some(existing) => {
                    existing.risk = existing.risk.max(rule.risk);
                    existing.rules.push(rule.name.clone());
                }
                None => needed.push(Requirement {
                    mechanism,
                    risk: rule.risk,
                    rules: vec![rule.name.clone()],
                }),
            }
        }
    }
    needed.retain(|req| {
        let window = pass_windows
            .iter()
            .find(|w| w.mechanism == req.mechanism && w.risk == req.risk)
            .map(|w| w.window_ms)
            .unwrap_or(0);
        let recently_passed = completeness
            .passed_ms_ago
            .iter()
            .any(|(m, ago)| *m == req.mechanism && *ago < window);
        !recently_passed
    });
    needed.sort_by_key(|r| r.mechanism);
    needed
}

/// The HMAC behind an OTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtpAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

fn otp(secret: &[u8], algorithm: OtpAlgorithm, digits: u8, step: u64) -> totp_rs::Totp {
    let algorithm = match algorithm {
        OtpAlgorithm::Sha1 => totp_rs::Algorithm::SHA1,
        OtpAlgorithm::Sha256 => totp_rs::Algorithm::SHA256,
        OtpAlgorithm::Sha512 => totp_rs::Algorithm::SHA512,
    };
    totp_rs::Builder::new()
        .with_algorithm(algorithm)
        .with_digits(digits)
        .with_step_duration(step)
        .with_skew(0)
        .with_secret(secret.to_vec())
        .build_noncompliant()
}

/// RFC 4226 HOTP value for a counter.
pub fn hotp(secret: &[u8], counter: u64, digits: u8) -> String {
    otp(secret, OtpAlgorithm::Sha1, digits, 1)
        .generate(counter)
        .to_string()
}

/// RFC 6238 TOTP value at a Unix time (seconds).
pub fn totp(
    secret: &[u8],
    algorithm: OtpAlgorithm,
    digits: u8,
    step_s: u64,
    time_s: u64,
) -> String {
    otp(secret, algorithm, digits, step_s)
        .generate(time_s)
        .to_string()
}

/// How TOTP codes are made and checked (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpParams {
    pub algorithm: OtpAlgorithm,
    pub digits: u8,
    pub step_s: u64,
    /// Steps of clock drift accepted either side.
    pub drift_steps: u64,
}

/// Checks a TOTP code within `drift_steps` steps either side of `time_s`, accepting only a
/// step after `last_used_step` (the replay guard: a code is accepted once). Returns the
/// matched step, to be remembered as the new `last_used_step`.
pub fn totp_verify(
    secret: &[u8],
    params: TotpParams,
    time_s: u64,
    code: &str,
    last_used_step: Option<u64>,
) -> Option<u64> {
    let TotpParams {
        algorithm,
        digits,
        step_s,
        drift_steps,
    } = params;
    let generator = otp(secret, algorithm, digits, step_s);
    let origin = time_s / step_s;
    (origin.saturating_sub(drift_steps)..=origin.saturating_add(drift_steps))
        .filter(|step| last_used_step.is_none_or(|last| *step > last))
        .find(|step| {
            let expected = generator.generate(step * step_s).to_string();
            // constant-time comparison of the digits
            expected.len() == code.len()
                && expected
                    .bytes()
                    .zip(code.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc4226_appendix_d_hotp_values() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, value) in expected.iter().enumerate() {
            assert_eq!(
                hotp(SEED_SHA1, counter as u64, 6),
                *value,
                "counter {counter}"
            );
        }
    }

    #[test]
    fn rfc6238_appendix_b_totp_values_for_all_three_hashes() {
        let table: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, sha1, sha256, sha512) in table {
            assert_eq!(
                totp(SEED_SHA1, OtpAlgorithm::Sha1, 8, 30, time),
                sha1,
                "{time}"
            );
            assert_eq!(
                totp(SEED_SHA256, OtpAlgorithm::Sha256, 8, 30, time),
                sha256,
                "{time}"
            );
            assert_eq!(
                totp(SEED_SHA512, OtpAlgorithm::Sha512, 8, 30, time),
                sha512,
                "{time}"
            );
        }
    }

    #[test]
    fn totp_verification_has_a_drift_window_and_a_replay_guard() {
        let now = 1_700_000_000;
        let p = TotpParams {
            algorithm: OtpAlgorithm::Sha1,
            digits: 6,
            step_s: 30,
            drift_steps: 1,
        };
        let code = totp(SEED_SHA1, OtpAlgorithm::Sha1, 6, 30, now);
        let step = totp_verify(SEED_SHA1, p, now, &code, None);
        assert_eq!(step, Some(now / 30));
        // one step of clock drift either way is accepted, two are not
        assert!(totp_verify(SEED_SHA1, p, now + 30, &code, None).is_some());
        assert!(totp_verify(SEED_SHA1, p, now + 60, &code, None).is_none());
        // the same code, or an older one, is refused once a step was used
        assert!(totp_verify(SEED_SHA1, p, now, &code, step).is_none());
        assert!(totp_verify(SEED_SHA1, p, now, "000000x", None).is_none());
    }

    fn completeness() -> Completeness {
        Completeness {
            amount_minor: 1_000,
            currency: "INR".into(),
            payee: "m-1".into(),
            first_payee: false,
            first_device_use: false,
            payments_in_window: 1,
            cumulative_minor_since_strong_auth: 1_000,
            hour_local: 12,
            passed_ms_ago: vec![],
        }
    }

    /// The rules are data: for a set of situations, which mechanisms the rule manager asks.
    #[test]
    fn the_rule_manager_as_a_table() {
        let rules: Vec<Rule> = serde_json::from_str(
            r#"[
              {"name":"large","risk":"high","require":["totp"],"when":{"amount_minor_min":200000}},
              {"name":"new-payee","risk":"medium","require":["totp"],"when":{"first_payee":true}},
              {"name":"new-device","risk":"medium","require":["pin"],"when":{"first_device_use":true}},
              {"name":"velocity","risk":"high","require":["oob"],"when":{"payments_in_window_min":10}},
              {"name":"night","risk":"low","require":["pin"],"when":{"hour_from":22,"hour_to":5}},
              {"name":"since-auth","risk":"medium","require":["totp"],"when":{"cumulative_minor_since_strong_auth_min":500000}},
              {"name":"always","risk":"low","require":["device_possession"]}
            ]"#,
        )
        .expect("rules parse");
        let windows = vec![
            PassWindow {
                mechanism: Mechanism::Totp,
                risk: RiskLevel::Medium,
                window_ms: 300_000,
            },
            PassWindow {
                mechanism: Mechanism::Totp,
                risk: RiskLevel::High,
                window_ms: 60_000,
            },
        ];
        type Case = (
            &'static str,
            fn(&mut Completeness),
            &'static [(Mechanism, RiskLevel)],
        );
        let cases: &[Case] = &[
            ("small, known payee, daytime", |_| {}, &[]),
            (
                "large amount",
                |c| c.amount_minor = 250_000,
                &[(Mechanism::Totp, RiskLevel::High)],
            ),
            (
                "first payee",
                |c| c.first_payee = true,
                &[(Mechanism::Totp, RiskLevel::Medium)],
            ),
            (
                "large and first payee: highest risk wins",
                |c| {
                    c.amount_minor = 250_000;
                    c.first_payee = true;
                },
                &[(Mechanism::Totp, RiskLevel::High)],
            ),
            (
                "first device use",
                |c| c.first_device_use = true,
                &[(Mechanism::Pin, RiskLevel::Medium)],
            ),
            (
                "velocity",
                |c| c.payments_in_window = 10,
                &[(Mechanism::Oob, RiskLevel::High)],
            ),
            (
                "night, wrapping midnight",
                |c| c.hour_local = 23,
                &[(Mechanism::Pin, RiskLevel::Low)],
            ),
            (
                "early morning",
                |c| c.hour_local = 4,
                &[(Mechanism::Pin, RiskLevel::Low)],
            ),
            (
                "cumulative since strong auth",
                |c| c.cumulative_minor_since_strong_auth = 600_000,
                &[(Mechanism::Totp, RiskLevel::Medium)],
            ),
            (
                "first payee, totp passed 2 min ago: spared",
                |c| {
                    c.first_payee = true;
                    c.passed_ms_ago = vec![(Mechanism::Totp, 120_000)];
                },
                &[],
            ),
            (
                "large, totp passed 2 min ago: high risk window is 1 min",
                |c| {
                    c.amount_minor = 250_000;
                    c.passed_ms_ago = vec![(Mechanism::Totp, 120_000)];
                },
                &[(Mechanism::Totp, RiskLevel::High)],
            ),
            (
                "large, totp passed 30 s ago: spared",
                |c| {
                    c.amount_minor = 250_000;
                    c.passed_ms_ago = vec![(Mechanism::Totp, 30_000)];
                },
                &[],
            ),
            (
                "everything at night",
                |c| {
                    c.amount_minor = 250_000;
                    c.first_device_use = true;
                    c.payments_in_window = 12;
                    c.hour_local = 2;
                },
                &[
                    (Mechanism::Totp, RiskLevel::High),
                    (Mechanism::Pin, RiskLevel::Medium),
                    (Mechanism::Oob, RiskLevel::High),
                ],
            ),
        ];
        for (name, adjust, expected) in cases {
            let mut c = completeness();
            adjust(&mut c);
            let got: Vec<(Mechanism, RiskLevel)> = required_mechanisms(&rules, &windows, &c)
                .into_iter()
                .map(|r| (r.mechanism, r.risk))
                .collect();
            assert_eq!(got, expected.to_vec(), "{name}");
        }
    }
}
