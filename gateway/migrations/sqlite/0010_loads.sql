-- Refund money a wallet cannot hold (it would pass the KYC tier's balance cap) is owed back to
-- the customer's source: a new account kind, refunds_payable. SQLite cannot change the CHECK
-- constraint in place: the accounts table is rebuilt, as in 0006.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE accounts_before_0010 AS SELECT * FROM accounts;
DROP TABLE accounts;
CREATE TABLE accounts (
    account_id       TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('wallet', 'merchant', 'agent', 'issuance',
                         'settlement', 'fee', 'points', 'points_liability', 'rewards_funding',
                         'refunds_payable')),
    currency         TEXT NOT NULL CHECK (length(currency) = 3),
    negative_allowed INTEGER NOT NULL DEFAULT 0 CHECK (negative_allowed IN (0, 1)),
    shards           INTEGER NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64),
    kyc_tier         TEXT CHECK (kyc_tier IN ('min', 'full')),
    category         TEXT,
    owner_account_id TEXT,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    created_at_ms    INTEGER NOT NULL,
    CHECK (kind <> 'wallet' OR kyc_tier IS NOT NULL)
);
INSERT INTO accounts (account_id, kind, currency, negative_allowed, shards, kyc_tier, category,
                      owner_account_id, status, created_at_ms)
    SELECT account_id, kind, currency, negative_allowed, shards, kyc_tier, category,
           owner_account_id, status, created_at_ms
    FROM accounts_before_0010;
DROP TABLE accounts_before_0010;

-- Loads (cash-in and operator funding) per wallet and business day, kept as postings are made
-- (ledger/counters.rs), for the KYC tier's monthly load limit. Existing history is counted in
-- once here, in IST (the default business time zone); ledger::align_calendar recounts it with
-- the day counters when the configured zone differs.
CREATE TABLE load_days (
    account_id   TEXT NOT NULL,
    local_day    BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    total_minor  BIGINT NOT NULL,
    load_count   BIGINT NOT NULL,
    PRIMARY KEY (account_id, local_day, kind)
);
INSERT INTO load_days (account_id, local_day, kind, total_minor, load_count)
SELECT p.account_id, (t.created_at_ms + 19800000) / 86400000, t.kind, SUM(p.amount_minor), COUNT(*)
FROM postings p JOIN transfers t ON t.tx_id = p.tx_id JOIN accounts a ON a.account_id = p.account_id
WHERE a.kind = 'wallet' AND p.amount_minor > 0 AND t.kind IN ('cash_in', 'funding')
GROUP BY p.account_id, (t.created_at_ms + 19800000) / 86400000, t.kind;

-- A clawback the customer could not cover (the points were spent): owed, and taken from the
-- next points the wallet earns (rewards.clawback_shortfall = "points_debt").
CREATE TABLE points_debts (
    wallet_account_id  TEXT PRIMARY KEY,
    points_owed        BIGINT NOT NULL CHECK (points_owed >= 0)
);
