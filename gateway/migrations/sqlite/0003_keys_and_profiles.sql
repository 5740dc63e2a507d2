-- Envelope encryption: every data key, wrapped by the key-encryption key (local or AWS KMS),
-- with the context it was made for. Rotation rewrites `wrapped` and `kek_id` (rewrap); the data
-- key itself, and so every field it encrypted, stays the same.
CREATE TABLE data_keys (
    data_key_id     TEXT PRIMARY KEY,
    purpose         TEXT NOT NULL CHECK (purpose IN ('field-encryption', 'blind-index')),
    context_json    TEXT NOT NULL,
    wrapped         BLOB NOT NULL,
    kek_id          TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    rewrapped_at_ms INTEGER
);
CREATE INDEX data_keys_by_context ON data_keys (purpose, context_json);

-- A wallet holder's personal data, each field encrypted (AES-256-GCM under a data key, the
-- field and wallet as additional data). Phone and VPA lookups go through keyed blind indexes.
CREATE TABLE wallet_profiles (
    wallet_account_id TEXT PRIMARY KEY REFERENCES accounts (account_id),
    name_ct           BLOB,
    phone_ct          BLOB,
    phone_bidx        BLOB,
    vpa_ct            BLOB,
    vpa_bidx          BLOB,
    totp_secret_ct    BLOB,
    updated_at_ms     INTEGER NOT NULL
);
CREATE INDEX wallet_profiles_by_phone ON wallet_profiles (phone_bidx);
CREATE INDEX wallet_profiles_by_vpa ON wallet_profiles (vpa_bidx);
