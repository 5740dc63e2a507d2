-- The ledger for every product (issue 3): more account kinds, units (a currency or reward
-- points, 'PTS'), wallet KYC tiers, merchant categories, and balances kept in shards so a hot
-- account (a merchant, the UPI settlement account) is not one row every payment locks.
-- A transfer may have any number of legs (each unit's legs sum to zero) and may name the
-- transfer it corrects (refund, reversal, clawback).

-- SQLite cannot change a CHECK constraint in place: the accounts table is rebuilt. Devices,
-- postings and profiles refer to it by name; with foreign keys deferred they find the new rows
-- before the transaction commits.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE accounts_before_0006 AS SELECT * FROM accounts;
DROP TABLE accounts;
CREATE TABLE accounts (
    account_id       TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('wallet', 'merchant', 'agent', 'issuance',
                         'settlement', 'fee', 'points', 'points_liability', 'rewards_funding')),
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
INSERT INTO accounts (account_id, kind, currency, negative_allowed, shards, kyc_tier, status, created_at_ms)
    SELECT account_id, kind, currency, negative_allowed,
           CASE kind WHEN 'wallet' THEN 1 ELSE 8 END,
           CASE kind WHEN 'wallet' THEN 'full' ELSE NULL END,
           status, created_at_ms
    FROM accounts_before_0006;

-- An account's balance is the sum of its shards. A shard never goes below zero where the
-- account forbids negative balances (a debit of a sharded account draws from several shards).
CREATE TABLE balance_shards (
    account_id       TEXT NOT NULL REFERENCES accounts (account_id),
    shard            INTEGER NOT NULL,
    balance_minor    INTEGER NOT NULL DEFAULT 0,
    negative_allowed INTEGER NOT NULL CHECK (negative_allowed IN (0, 1)),
    PRIMARY KEY (account_id, shard),
    CHECK (negative_allowed = 1 OR balance_minor >= 0)
);
WITH RECURSIVE n(shard) AS (SELECT 0 UNION ALL SELECT shard + 1 FROM n WHERE shard < 63)
INSERT INTO balance_shards (account_id, shard, balance_minor, negative_allowed)
    SELECT a.account_id, n.shard,
           CASE n.shard WHEN 0 THEN o.balance_minor ELSE 0 END, a.negative_allowed
    FROM accounts a JOIN accounts_before_0006 o ON o.account_id = a.account_id
    JOIN n ON n.shard < a.shards;
DROP TABLE accounts_before_0006;

ALTER TABLE transfers ADD COLUMN related_tx_id TEXT REFERENCES transfers (tx_id);
CREATE INDEX transfers_by_related ON transfers (related_tx_id);
CREATE INDEX transfers_by_time ON transfers (kind, created_at_ms);
CREATE INDEX postings_by_tx ON postings (tx_id);
