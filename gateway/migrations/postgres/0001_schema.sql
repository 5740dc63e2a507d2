-- paygate on PostgreSQL: the same tables as the SQLite migrations 0001-0006 arrive at, in
-- PostgreSQL's types. Comments on each table are in the SQLite migrations.

CREATE TABLE accounts (
    account_id       TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('wallet', 'merchant', 'agent', 'issuance',
                         'settlement', 'fee', 'points', 'points_liability', 'rewards_funding')),
    currency         TEXT NOT NULL CHECK (length(currency) = 3),
    negative_allowed BIGINT NOT NULL DEFAULT 0 CHECK (negative_allowed IN (0, 1)),
    shards           BIGINT NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64),
    kyc_tier         TEXT CHECK (kyc_tier IN ('min', 'full')),
    category         TEXT,
    owner_account_id TEXT,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    created_at_ms    BIGINT NOT NULL,
    CHECK (kind <> 'wallet' OR kyc_tier IS NOT NULL)
);

CREATE TABLE balance_shards (
    account_id       TEXT NOT NULL REFERENCES accounts (account_id),
    shard            BIGINT NOT NULL,
    balance_minor    BIGINT NOT NULL DEFAULT 0,
    negative_allowed BIGINT NOT NULL CHECK (negative_allowed IN (0, 1)),
    PRIMARY KEY (account_id, shard),
    CHECK (negative_allowed = 1 OR balance_minor >= 0)
);

CREATE TABLE devices (
    device_id         TEXT PRIMARY KEY,
    algorithm         TEXT NOT NULL CHECK (algorithm IN ('ed25519', 'es256')),
    public_key        BYTEA NOT NULL,
    wallet_account_id TEXT NOT NULL REFERENCES accounts (account_id),
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    enrolled_at_ms    BIGINT NOT NULL
);

CREATE TABLE transfers (
    tx_id           TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    device_id       TEXT,
    idempotency_key TEXT,
    currency        TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    created_at_ms   BIGINT NOT NULL,
    related_tx_id   TEXT REFERENCES transfers (tx_id),
    UNIQUE (device_id, idempotency_key)
);
CREATE INDEX transfers_by_related ON transfers (related_tx_id);
CREATE INDEX transfers_by_time ON transfers (kind, created_at_ms);

CREATE TABLE postings (
    posting_id    BIGSERIAL PRIMARY KEY,
    tx_id         TEXT NOT NULL REFERENCES transfers (tx_id),
    account_id    TEXT NOT NULL REFERENCES accounts (account_id),
    currency      TEXT NOT NULL,
    amount_minor  BIGINT NOT NULL CHECK (amount_minor <> 0)
);
CREATE INDEX postings_by_account ON postings (account_id);
CREATE INDEX postings_by_tx ON postings (tx_id);

CREATE TABLE requests (
    device_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    counter         BIGINT NOT NULL,
    body_sha256     BYTEA NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('approved', 'declined')),
    code            TEXT,
    tx_id           TEXT REFERENCES transfers (tx_id),
    receipt         BYTEA NOT NULL,
    decided_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (device_id, idempotency_key),
    UNIQUE (device_id, counter)
);

CREATE FUNCTION paygate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER postings_are_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION paygate_append_only();
CREATE TRIGGER transfers_are_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION paygate_append_only();
CREATE TRIGGER requests_are_append_only BEFORE UPDATE ON requests
    FOR EACH ROW EXECUTE FUNCTION paygate_append_only();

-- The audit outbox. Sequence values are not committed in order on PostgreSQL: every insert
-- takes a transaction-scoped advisory lock first (store::add_audit_events), so ids become
-- visible in id order and the journal writer's "after id N" never skips a row.
CREATE TABLE audit_outbox (
    outbox_id  BIGSERIAL PRIMARY KEY,
    event_json TEXT NOT NULL
);

CREATE TABLE data_keys (
    data_key_id     TEXT PRIMARY KEY,
    purpose         TEXT NOT NULL CHECK (purpose IN ('field-encryption', 'blind-index')),
    context_json    TEXT NOT NULL,
    wrapped         BYTEA NOT NULL,
    kek_id          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    rewrapped_at_ms BIGINT
);
CREATE INDEX data_keys_by_context ON data_keys (purpose, context_json);

CREATE TABLE wallet_profiles (
    wallet_account_id TEXT PRIMARY KEY REFERENCES accounts (account_id),
    name_ct           BYTEA,
    phone_ct          BYTEA,
    phone_bidx        BYTEA,
    vpa_ct            BYTEA,
    vpa_bidx          BYTEA,
    totp_secret_ct    BYTEA,
    updated_at_ms     BIGINT NOT NULL
);
CREATE INDEX wallet_profiles_by_phone ON wallet_profiles (phone_bidx);
CREATE INDEX wallet_profiles_by_vpa ON wallet_profiles (vpa_bidx);

CREATE TABLE payment_instruments (
    device_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('card', 'upi')),
    value_ct        BYTEA NOT NULL,
    value_bidx      BYTEA NOT NULL,
    masked          TEXT NOT NULL,
    PRIMARY KEY (device_id, idempotency_key)
);
CREATE INDEX payment_instruments_by_value ON payment_instruments (value_bidx);
CREATE TRIGGER payment_instruments_are_append_only BEFORE UPDATE ON payment_instruments
    FOR EACH ROW EXECUTE FUNCTION paygate_append_only();

CREATE TABLE identity_challenges (
    challenge_id      TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL,
    wallet_account_id TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    counter           BIGINT NOT NULL,
    body_sha256       BYTEA NOT NULL,
    merchant_id       TEXT NOT NULL,
    amount_minor      BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    payer_kind        TEXT,
    payer_ct          BYTEA,
    payer_bidx        BYTEA,
    payer_masked      TEXT,
    mechanisms        TEXT NOT NULL,
    risk              TEXT NOT NULL,
    oob_code_sha256   BYTEA,
    attempts          BIGINT NOT NULL DEFAULT 0,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'passed', 'failed', 'expired')),
    receipt           BYTEA NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    UNIQUE (device_id, idempotency_key),
    UNIQUE (device_id, counter)
);
CREATE INDEX identity_challenges_open ON identity_challenges (state, expires_at_ms);

CREATE TABLE identity_passes (
    wallet_account_id TEXT NOT NULL,
    mechanism         TEXT NOT NULL,
    passed_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (wallet_account_id, mechanism)
);

CREATE TABLE identity_lockouts (
    wallet_account_id TEXT NOT NULL,
    mechanism         TEXT NOT NULL,
    locked_until_ms   BIGINT NOT NULL,
    PRIMARY KEY (wallet_account_id, mechanism)
);

CREATE TABLE totp_used_steps (
    wallet_account_id TEXT PRIMARY KEY,
    last_step         BIGINT NOT NULL
);

CREATE TABLE customer_pins (
    wallet_account_id TEXT PRIMARY KEY,
    pin_phc           TEXT NOT NULL,
    set_at_ms         BIGINT NOT NULL
);
