//! Redaction: card numbers, UPI addresses and phone numbers shown only as PCI DSS allows,
//! and free text scrubbed of anything that may be a card number before it is recorded (audit
//! records, receipt messages, logs).

/// A PAN shown as PCI DSS 3.4.1 allows at most: first six and last four digits.
pub fn mask_pan(pan: &str) -> String {
    let digits: Vec<char> = pan.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 12 {
        return "*".repeat(digits.len());
    }
    let hidden = digits.len() - 10;
    let mut out: String = digits[..6].iter().collect();
    out.push_str(&"*".repeat(hidden));
    out.extend(&digits[digits.len() - 4..]);
    out
}

/// A UPI address with the handle hidden but its first and last characters: `r****a@okbank`.
pub fn mask_vpa(vpa: &str) -> String {
    match vpa.split_once('@') {
        Some((handle, psp)) => format!("{}@{psp}", mask_middle(handle)),
        None => mask_middle(vpa),
    }
}

/// A phone number with only its last two digits: `********10`.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let shown = digits.len().min(2);
    let mut out = "*".repeat(digits.len() - shown);
    out.extend(&digits[digits.len() - shown..]);
    out
}

fn mask_middle(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    match chars.len() {
        0 => String::new(),
        1 | 2 => "*".repeat(chars.len()),
        n => {
            let mut out = String::new();
            out.push(chars[0]);
            out.push_str(&"*".repeat(n - 2));
            out.push(chars[n - 1]);
            out
        }
    }
}

/// Whether the alphanumeric token around `chars[start..end]` is hexadecimal (digits and
/// a-f only).
fn in_hex_token(chars: &[char], start: usize, end: usize) -> bool {
    let mut from = start;
    while from > 0 && chars[from - 1].is_alphanumeric() {
        from -= 1;
    }
    let mut to = end;
    while to < chars.len() && chars[to].is_alphanumeric() {
        to += 1;
    }
    chars[from..to].iter().all(char::is_ascii_hexdigit)
}

/// Whether some 13 to 19 consecutive digits of `digits` pass the Luhn check.
fn holds_card_number(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    (0..bytes.len()).any(|start| {
        (13..=19).any(|length| {
            bytes
                .get(start..start + length)
                .is_some_and(|window| crate::payer::luhn_ok(&String::from_utf8_lossy(window)))
        })
    })
}

/// Masks what may be a card number in free text, so one that slips into a message, an id or a
/// key never reaches a record in clear:
/// - every standalone run of 12 to 19 digits;
/// - 13 to 19 digits grouped by single separators (`4111-1111-1111-1111`, `4111 1111 1111
///   1111`, dots or underscores) or joined to letters (`m4111111111111111`), when they pass the
///   Luhn check. Digits inside a hexadecimal token (a key, a hash, a transaction id: letters
///   a-f only) are left alone: their digit runs pass the Luhn check often enough that masking
///   them would cost the auditor the key.
pub fn scrub(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // the span: digits, with at most one separator between two digits
        let start = i;
        let mut end = i;
        let mut digits = String::new();
        let mut separated = false;
        while end < chars.len() {
            if chars[end].is_ascii_digit() {
                digits.push(chars[end]);
                end += 1;
            } else if matches!(chars[end], '-' | ' ' | '.' | '_')
                && chars.get(end + 1).is_some_and(char::is_ascii_digit)
            {
                separated = true;
                end += 1;
            } else {
                break;
            }
        }
        let bounded = |at: Option<&char>| at.is_none_or(|c| !c.is_alphanumeric());
        let standalone = !separated
            && bounded(start.checked_sub(1).and_then(|k| chars.get(k)))
            && bounded(chars.get(end));
        let card_like =
            holds_card_number(&digits) && (separated || !in_hex_token(&chars, start, end));
        if (standalone && (12..=19).contains(&digits.len())) || card_like {
            out.push_str(&mask_pan(&digits));
        } else {
            out.extend(&chars[start..end]);
        }
        i = end;
    }
    out
}
