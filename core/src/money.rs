//! Money: an integer count of minor units with an ISO 4217 currency. No floats anywhere;
//! arithmetic is checked and fails loudly instead of wrapping.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An active ISO 4217 currency with a defined minor unit (funds, metals, `XTS` and `XXX`
/// are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Option<Currency> {
        let currency = iso_currency::Currency::from_code(code)?;
        if currency.is_fund() || currency.is_special() || currency.is_superseded().is_some() {
            return None;
        }
        currency.exponent()?;
        Some(Currency(currency))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point (2 for INR, 0 for JPY, 3 for KWD).
    pub fn minor_unit_digits(self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).ok_or_else(|| serde::de::Error::custom(UnknownCurrency(code)))
    }
}

/// Marker text so the request decoder can tell an unknown currency from other schema errors.
#[derive(Debug)]
pub struct UnknownCurrency(pub String);

impl fmt::Display for UnknownCurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown currency {:?}", self.0)
    }
}

/// The largest amount paygate accepts in one request, in minor units. Keeping it far below
/// `i64::MAX` means a sum of a batch of amounts cannot overflow a signed 64-bit column.
pub const AMOUNT_MINOR_MAX: u64 = 1_000_000_000_000_000; // 10^15 minor units

/// A positive amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Minor units (paise for INR). Must be a JSON integer.
    pub minor: u64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount exceeds the maximum of {AMOUNT_MINOR_MAX} minor units")]
    TooLarge,
    #[error("amount {0:?} is not a decimal number with at most the currency's minor digits")]
    BadDecimal(String),
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
}

impl Money {
    /// A validated positive amount.
    pub fn new(minor: u64, currency: Currency) -> Result<Money, MoneyError> {
        if minor == 0 {
            return Err(MoneyError::NotPositive);
        }
        if minor > AMOUNT_MINOR_MAX {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money { minor, currency })
    }

    /// Validates an amount that came off the wire.
    pub fn validate(self) -> Result<Money, MoneyError> {
        Money::new(self.minor, self.currency)
    }

    /// Parses a human amount such as `12.50` for a currency, exactly (no floats).
    pub fn parse_decimal(text: &str, currency_code: &str) -> Result<Money, MoneyError> {
        let currency = Currency::parse(currency_code)
            .ok_or_else(|| MoneyError::UnknownCurrency(currency_code.to_owned()))?;
        let bad = || MoneyError::BadDecimal(text.to_owned());
        let digits = currency.minor_unit_digits();
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > digits as usize
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(bad());
        }
        let scale = 10u64.checked_pow(digits).ok_or_else(bad)?;
        let whole_minor = whole
            .parse::<u64>()
            .ok()
            .and_then(|w| w.checked_mul(scale))
            .ok_or(MoneyError::TooLarge)?;
        let mut fraction_padded = fraction.to_owned();
        while fraction_padded.len() < digits as usize {
            fraction_padded.push('0');
        }
        let fraction_minor = if fraction_padded.is_empty() {
            0
        } else {
            fraction_padded.parse::<u64>().map_err(|_| bad())?
        };
        let minor = whole_minor
            .checked_add(fraction_minor)
            .ok_or(MoneyError::TooLarge)?;
        Money::new(minor, currency)
    }

    /// The amount as a signed value for a ledger column. Never fails for a validated amount.
    pub fn minor_signed(self) -> i64 {
        i64::try_from(self.minor).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_unit_digits();
        if digits == 0 {
            return write!(f, "{} {}", self.minor, self.currency);
        }
        let scale = 10u64.pow(digits);
        write!(
            f,
            "{}.{:0width$} {}",
            self.minor / scale,
            self.minor % scale,
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_amounts_exactly() {
        let table = [
            ("12.50", "INR", Ok(1250)),
            ("12.5", "INR", Ok(1250)),
            ("12", "INR", Ok(1200)),
            ("0.01", "INR", Ok(1)),
            ("100", "JPY", Ok(100)),
            ("1.234", "KWD", Ok(1234)),
            (
                "12.505",
                "INR",
                Err(MoneyError::BadDecimal("12.505".into())),
            ),
            ("1.5", "JPY", Err(MoneyError::BadDecimal("1.5".into()))),
            ("-1", "INR", Err(MoneyError::BadDecimal("-1".into()))),
            ("1e3", "INR", Err(MoneyError::BadDecimal("1e3".into()))),
            ("12.", "INR", Err(MoneyError::BadDecimal("12.".into()))),
            ("0", "INR", Err(MoneyError::NotPositive)),
            ("0.00", "INR", Err(MoneyError::NotPositive)),
            ("1", "ABC", Err(MoneyError::UnknownCurrency("ABC".into()))),
            ("1", "XTS", Err(MoneyError::UnknownCurrency("XTS".into()))),
            ("99999999999999999999", "INR", Err(MoneyError::TooLarge)),
        ];
        for (text, currency, expected) in table {
            let got = Money::parse_decimal(text, currency).map(|m| m.minor);
            assert_eq!(got, expected, "{text} {currency}");
        }
    }

    #[test]
    fn displays_with_the_currency_minor_digits() {
        let inr = Currency::parse("INR").expect("INR is active");
        assert_eq!(
            Money::new(1250, inr).map(|m| m.to_string()),
            Ok("12.50 INR".into())
        );
        let jpy = Currency::parse("JPY").expect("JPY is active");
        assert_eq!(
            Money::new(7, jpy).map(|m| m.to_string()),
            Ok("7 JPY".into())
        );
    }
}
