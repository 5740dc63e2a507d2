//! A wallet holder's personal data (name, phone, UPI address, TOTP secret), encrypted field by
//! field at rest, found by phone or VPA through keyed blind indexes. Nothing here is ever
//! logged; what leaves in clear is masked (`paygate_core::audit::mask_*`).

use crate::keys::cipher::FieldCipher;
use crate::keys::KeyError;
use paygate_core::AccountId;
use sqlx::Row;

const TABLE: &str = "wallet_profiles";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{field} is not valid: {why}")]
    Invalid { field: &'static str, why: String },
    /// The phone or VPA is linked to another wallet already.
    #[error("the {field} is linked to another wallet")]
    Taken { field: &'static str },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What an operator enters for a wallet holder.
pub struct WalletProfile {
    pub name: String,
    pub phone: String,
    pub vpa: String,
}

/// The profile as shown to someone entitled to see it: masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedProfile {
    pub wallet: String,
    pub name: String,
    pub phone: String,
    pub vpa: String,
    pub has_totp_secret: bool,
}

/// E.164, `+` and 8 to 15 digits, the first not 0: the one spelling of a number, so one phone
/// names one wallet. Spaces and dashes between digits are dropped; a national form (`098...`),
/// an international prefix (`0091...`), a number without `+`, or a `+` anywhere but first is
/// refused rather than guessed at.
pub fn normalise_phone(phone: &str) -> Result<String, ProfileError> {
    let invalid = |why: &str| ProfileError::Invalid {
        field: "phone",
        why: why.to_owned(),
    };
    let trimmed = phone.trim();
    let Some(rest) = trimmed.strip_prefix('+') else {
        return Err(invalid("E.164 starts with + and the country code"));
    };
    if rest
        .chars()
        .any(|c| !(c.is_ascii_digit() || c == ' ' || c == '-'))
    {
        return Err(invalid("after the +, only digits, spaces and dashes"));
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if !(8..=15).contains(&digits.len()) {
        return Err(invalid("8 to 15 digits"));
    }
    if digits.starts_with('0') {
        return Err(invalid("a country code never starts with 0"));
    }
    Ok(format!("+{digits}"))
}

/// A UPI address `handle@psp`, lowercased. Anything outside ASCII letters, digits and `._-`
/// is refused, which also refuses confusable and zero-width characters.
pub fn normalise_vpa(vpa: &str) -> Result<String, ProfileError> {
    let invalid = |why: &str| ProfileError::Invalid {
        field: "vpa",
        why: why.to_owned(),
    };
    let lower = vpa.trim().to_ascii_lowercase();
    let Some((handle, psp)) = lower.split_once('@') else {
        return Err(invalid("must be handle@psp"));
    };
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    };
    if !allowed(handle) || !allowed(psp) {
        return Err(invalid(
            "only ASCII letters, digits, '.', '_' and '-' (no look-alike or invisible characters)",
        ));
    }
    if !(2..=256).contains(&handle.len()) || !(2..=64).contains(&psp.len()) {
        return Err(invalid("handle 2-256 and psp 2-64 characters"));
    }
    Ok(lower)
}

/// Encrypts and stores a profile (and a TOTP secret when given), replacing any before.
pub async fn save(
    cipher: &FieldCipher,
    pool: &sqlx::AnyPool,
    wallet: &AccountId,
    profile: &WalletProfile,
    totp_secret: Option<&[u8]>,
) -> Result<(), ProfileError> {
    let name = profile.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ProfileError::Invalid {
            field: "name",
            why: "1 to 200 printable characters".into(),
        });
    }
    let phone = normalise_phone(&profile.phone)?;
    let vpa = normalise_vpa(&profile.vpa)?;
    let record = wallet.as_str();
    let name_ct = cipher
        .encrypt(TABLE, "name", record, name.as_bytes())
        .await?;
    let phone_ct = cipher
        .encrypt(TABLE, "phone", record, phone.as_bytes())
        .await?;
    let vpa_ct = cipher.encrypt(TABLE, "vpa", record, vpa.as_bytes()).await?;
    let phone_bidx = cipher.blind_index(TABLE, "phone", &phone).await?;
    let vpa_bidx = cipher.blind_index(TABLE, "vpa", &vpa).await?;
    let totp_ct = match totp_secret {
        Some(secret) => Some(cipher.encrypt(TABLE, "totp_secret", record, secret).await?),
        None => None,
    };
    for (column, field, index) in [
        ("phone_bidx", "phone", &phone_bidx),
        ("vpa_bidx", "vpa", &vpa_bidx),
    ] {
        let holder: Option<String> = sqlx::query_scalar(&format!(
            "SELECT wallet_account_id FROM wallet_profiles WHERE {column} = $1"
        ))
        .bind(index.to_vec())
        .fetch_optional(pool)
        .await?;
        if holder.is_some_and(|holder| holder != record) {
            return Err(ProfileError::Taken { field });
        }
    }
    // the unique indexes refuse what a concurrent save slipped in between
    let saved = sqlx::query(
        "INSERT INTO wallet_profiles (wallet_account_id, name_ct, phone_ct, phone_bidx, vpa_ct, vpa_bidx, totp_secret_ct, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (wallet_account_id) DO UPDATE SET name_ct = excluded.name_ct,
           phone_ct = excluded.phone_ct, phone_bidx = excluded.phone_bidx, vpa_ct = excluded.vpa_ct,
           vpa_bidx = excluded.vpa_bidx,
           totp_secret_ct = COALESCE(excluded.totp_secret_ct, wallet_profiles.totp_secret_ct),
           updated_at_ms = excluded.updated_at_ms",
    )
    .bind(record)
    .bind(name_ct)
    .bind(phone_ct)
    .bind(phone_bidx.to_vec())
    .bind(vpa_ct)
    .bind(vpa_bidx.to_vec())
    .bind(totp_ct)
    .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
    .execute(pool)
    .await;
    match saved {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(ProfileError::Taken {
                field: "phone or vpa",
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// The wallet whose holder has this phone or VPA (looked up by blind index).
pub async fn find(
    cipher: &FieldCipher,
    pool: &sqlx::AnyPool,
    phone: Option<&str>,
    vpa: Option<&str>,
) -> Result<Option<String>, ProfileError> {
    let (column, field, value) = match (phone, vpa) {
        (Some(phone), _) => ("phone_bidx", "phone", normalise_phone(phone)?),
        (None, Some(vpa)) => ("vpa_bidx", "vpa", normalise_vpa(vpa)?),
        (None, None) => return Ok(None),
    };
    let index = cipher.blind_index(TABLE, field, &value).await?;
    let row = sqlx::query(&format!(
        "SELECT wallet_account_id FROM wallet_profiles WHERE {column} = $1"
    ))
    .bind(index.to_vec())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| r.get::<String, _>("wallet_account_id")))
}

/// Decrypts a profile and returns it masked.
pub async fn show(
    cipher: &FieldCipher,
    pool: &sqlx::AnyPool,
    wallet: &AccountId,
) -> Result<Option<MaskedProfile>, ProfileError> {
    let Some(row) = sqlx::query(
        "SELECT name_ct, phone_ct, vpa_ct, totp_secret_ct FROM wallet_profiles WHERE wallet_account_id = $1",
    )
    .bind(wallet.as_str())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let record = wallet.as_str();
    let open = |field: &'static str, column: &'static str| {
        let sealed: Option<Vec<u8>> = row.get(column);
        async move {
            match sealed {
                Some(sealed) => {
                    let plain = cipher.decrypt(TABLE, field, record, &sealed).await?;
                    Ok::<_, ProfileError>(String::from_utf8_lossy(&plain).into_owned())
                }
                None => Ok(String::new()),
            }
        }
    };
    let name = open("name", "name_ct").await?;
    let phone = open("phone", "phone_ct").await?;
    let vpa = open("vpa", "vpa_ct").await?;
    let has_totp_secret = row.get::<Option<Vec<u8>>, _>("totp_secret_ct").is_some();
    let initial: String = name.chars().take(1).collect();
    Ok(Some(MaskedProfile {
        wallet: record.to_owned(),
        name: format!("{initial}***"),
        phone: paygate_core::audit::mask_phone(&phone),
        vpa: paygate_core::audit::mask_vpa(&vpa),
        has_totp_secret,
    }))
}

/// The TOTP secret, decrypted, for the identity validator (never printed or logged).
pub async fn totp_secret(
    cipher: &FieldCipher,
    pool: &sqlx::AnyPool,
    wallet: &AccountId,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, ProfileError> {
    let row =
        sqlx::query("SELECT totp_secret_ct FROM wallet_profiles WHERE wallet_account_id = $1")
            .bind(wallet.as_str())
            .fetch_optional(pool)
            .await?;
    let Some(sealed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>("totp_secret_ct")) else {
        return Ok(None);
    };
    Ok(Some(
        cipher
            .decrypt(TABLE, "totp_secret", wallet.as_str(), &sealed)
            .await?,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::normalise_phone;
    use proptest::prelude::*;

    #[test]
    fn one_number_has_one_spelling_and_the_others_are_refused() {
        for same in [
            "+919800000001",
            "+91 98000 00001",
            "+91-98000-00001",
            " +919800000001 ",
        ] {
            assert_eq!(normalise_phone(same).unwrap(), "+919800000001", "{same}");
        }
        for other in [
            "919800000001",
            "9800000001",
            "09800000001",
            "00919800000001",
            "+00919800000001",
            "+9+1+9800000001",
            "9198000000+01",
            "+91980000000١",
            "+1234567",
            "+1234567890123456",
        ] {
            assert!(normalise_phone(other).is_err(), "{other}");
        }
    }

    proptest! {
        /// Whatever is typed: refused, or the canonical form, which is a fixed point; two
        /// accepted inputs give one form exactly when they hold the same digits.
        #[test]
        fn normalised_phones_are_canonical(a in "[+0-9 -]{0,20}", b in "[+0-9 -]{0,20}") {
            if let Ok(n) = normalise_phone(&a) {
                prop_assert_eq!(normalise_phone(&n).unwrap(), n.clone());
                prop_assert!(n.starts_with('+') && !n[1..].starts_with('0'));
                if let Ok(m) = normalise_phone(&b) {
                    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
                    prop_assert_eq!(n == m, digits(&a) == digits(&b));
                }
            }
        }
    }
}
