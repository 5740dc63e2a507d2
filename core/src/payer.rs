//! The customer's instrument presented at the terminal, when there is one: a card (its PAN) or
//! a UPI address with the encrypted UPI PIN credential block. These are the most sensitive
//! values paygate sees. Their types print masked (`Debug` never shows them), the gateway stores
//! the PAN and VPA only encrypted (with a blind index for lookups), and the credential block is
//! never stored or logged at all: it exists to be handed to the UPI switch.

use crate::audit::{mask_pan, mask_vpa};
use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};

/// The payer on the wire (`op.payer`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PayerWire {
    /// A card read at the terminal: 12 to 19 digits passing the Luhn check.
    Card { pan: String },
    /// A UPI payer: `handle@psp`, and the credential block (base64) the PSP's SDK produced.
    Upi {
        vpa: String,
        credential_block: String,
    },
}

impl std::fmt::Debug for PayerWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayerWire::Card { pan } => write!(f, "Card {{ pan: {} }}", mask_pan(pan)),
            PayerWire::Upi { vpa, .. } => {
                write!(f, "Upi {{ vpa: {}, credential_block: *** }}", mask_vpa(vpa))
            }
        }
    }
}

/// A primary account number. `Debug` and `masked` show the first six and last four digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(String);

/// A normalised UPI address (ASCII, lowercase).
#[derive(Clone, PartialEq, Eq)]
pub struct Vpa(String);

/// The encrypted UPI PIN block: opaque, passed on, never stored or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialBlock(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payer {
    Card {
        pan: Pan,
    },
    Upi {
        vpa: Vpa,
        credential_block: CredentialBlock,
    },
}

macro_rules! masked_debug {
    ($t:ty, $mask:expr) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mask: fn(&$t) -> String = $mask;
                f.write_str(&mask(self))
            }
        }
    };
}

masked_debug!(Pan, |p| mask_pan(&p.0));
masked_debug!(Vpa, |v| mask_vpa(&v.0));
masked_debug!(CredentialBlock, |_| "***".to_owned());

pub(crate) fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.rem_euclid(10) == 0
}

impl Pan {
    pub fn parse(text: &str) -> Result<Pan, String> {
        if !(12..=19).contains(&text.len()) || !text.chars().all(|c| c.is_ascii_digit()) {
            return Err("pan must be 12 to 19 digits".into());
        }
        if !luhn_ok(text) {
            return Err("pan fails the Luhn check".into());
        }
        Ok(Pan(text.to_owned()))
    }

    /// The digits, for encryption only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        mask_pan(&self.0)
    }
}

impl Vpa {
    /// `handle@psp`, lowercased; only ASCII letters, digits, `.`, `_` and `-`, which also
    /// refuses confusable and zero-width characters.
    pub fn parse(text: &str) -> Result<Vpa, String> {
        let lower = text.trim().to_ascii_lowercase();
        let Some((handle, psp)) = lower.split_once('@') else {
            return Err("vpa must be handle@psp".into());
        };
        let allowed = |s: &str| {
            s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
        };
        if !allowed(handle) || !allowed(psp) {
            return Err(
                "vpa allows only ASCII letters, digits, '.', '_' and '-' (no look-alike or invisible characters)"
                    .into(),
            );
        }
        if !(2..=256).contains(&handle.len()) || !(2..=64).contains(&psp.len()) {
            return Err("vpa handle is 2-256 and psp 2-64 characters".into());
        }
        Ok(Vpa(lower))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        mask_vpa(&self.0)
    }
}

impl CredentialBlock {
    pub fn parse(base64_text: &str) -> Result<CredentialBlock, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_text)
            .map_err(|_| "credential_block is not base64".to_owned())?;
        if !(16..=2048).contains(&bytes.len()) {
            return Err("credential_block must be 16 to 2048 bytes".into());
        }
        Ok(CredentialBlock(bytes))
    }

    /// The bytes, for the UPI switch only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Payer {
    pub fn decode(wire: &PayerWire) -> Result<Payer, (ErrorCode, String)> {
        let invalid = |m: String| (ErrorCode::PayerInvalid, m);
        match wire {
            PayerWire::Card { pan } => Ok(Payer::Card {
                pan: Pan::parse(pan).map_err(invalid)?,
            }),
            PayerWire::Upi {
                vpa,
                credential_block,
            } => Ok(Payer::Upi {
                vpa: Vpa::parse(vpa).map_err(invalid)?,
                credential_block: CredentialBlock::parse(credential_block).map_err(invalid)?,
            }),
        }
    }

    pub fn to_wire(&self) -> PayerWire {
        use base64::Engine;
        match self {
            Payer::Card { pan } => PayerWire::Card { pan: pan.0.clone() },
            Payer::Upi {
                vpa,
                credential_block,
            } => PayerWire::Upi {
                vpa: vpa.0.clone(),
                credential_block: base64::engine::general_purpose::STANDARD
                    .encode(&credential_block.0),
            },
        }
    }

    /// What receipts, logs and audit records may show.
    pub fn masked(&self) -> String {
        match self {
            Payer::Card { pan } => format!("card {}", pan.masked()),
            Payer::Upi { vpa, .. } => format!("upi {}", vpa.masked()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payers_validate_and_never_print_in_clear() {
        let card = Payer::decode(&PayerWire::Card {
            pan: "4111111111111111".into(),
        })
        .expect("valid card");
        assert_eq!(card.masked(), "card 411111******1111");
        assert!(!format!("{card:?}").contains("4111111111111111"));
        let block = "c2VjcmV0LXBpbi1ibG9jay0xMjM0NTY=";
        let upi = Payer::decode(&PayerWire::Upi {
            vpa: "Asha.R@OKBANK".into(),
            credential_block: block.into(),
        })
        .expect("valid upi");
        assert_eq!(upi.masked(), "upi a****r@okbank");
        let printed = format!("{upi:?}");
        assert!(
            !printed.contains("asha.r") && !printed.contains(block),
            "{printed}"
        );
        for (wire, why) in [
            (
                PayerWire::Card {
                    pan: "4111111111111112".into(),
                },
                "Luhn",
            ),
            (
                PayerWire::Card {
                    pan: "41111".into(),
                },
                "digits",
            ),
            (
                PayerWire::Upi {
                    vpa: "as\u{200b}ha@okbank".into(),
                    credential_block: block.into(),
                },
                "ASCII",
            ),
            (
                PayerWire::Upi {
                    vpa: "asha@okbank".into(),
                    credential_block: "!!".into(),
                },
                "base64",
            ),
            (
                PayerWire::Upi {
                    vpa: "asha@okbank".into(),
                    credential_block: "c2hvcnQ=".into(),
                },
                "16 to 2048",
            ),
        ] {
            let Err((code, message)) = Payer::decode(&wire) else {
                panic!("{wire:?} accepted");
            };
            assert_eq!(code, ErrorCode::PayerInvalid);
            assert!(message.contains(why), "{message}");
        }
    }
}
