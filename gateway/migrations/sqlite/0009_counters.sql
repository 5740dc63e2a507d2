-- Counters kept as postings are made (ledger/counters.rs), so that limits, velocity and the
-- step-up completeness data read a bounded number of rows whatever an account's history.
-- Existing history is counted in once here, in IST (UTC+05:30, the default business time
-- zone); a gateway configured for another zone recounts the days at its start.

CREATE TABLE debit_days (
    account_id   TEXT NOT NULL,
    local_day    BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    total_minor  BIGINT NOT NULL,
    debit_count  BIGINT NOT NULL,
    PRIMARY KEY (account_id, local_day, kind)
);
INSERT INTO debit_days (account_id, local_day, kind, total_minor, debit_count)
SELECT p.account_id, (t.created_at_ms + 19800000) / 86400000, t.kind, SUM(-p.amount_minor), COUNT(*)
FROM postings p JOIN transfers t ON t.tx_id = p.tx_id JOIN accounts a ON a.account_id = p.account_id
WHERE a.kind = 'wallet' AND p.amount_minor < 0
GROUP BY p.account_id, (t.created_at_ms + 19800000) / 86400000, t.kind;

CREATE TABLE wallet_debit_log (
    account_id     TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    tx_id          TEXT NOT NULL
);
CREATE INDEX wallet_debit_log_by_time ON wallet_debit_log (account_id, created_at_ms);
INSERT INTO wallet_debit_log (account_id, created_at_ms, tx_id)
SELECT p.account_id, t.created_at_ms, t.tx_id
FROM postings p JOIN transfers t ON t.tx_id = p.tx_id JOIN accounts a ON a.account_id = p.account_id
WHERE a.kind = 'wallet' AND p.amount_minor < 0;

CREATE TABLE wallet_payees (
    wallet_account_id  TEXT NOT NULL,
    payee_account_id   TEXT NOT NULL,
    PRIMARY KEY (wallet_account_id, payee_account_id)
);
INSERT INTO wallet_payees (wallet_account_id, payee_account_id)
SELECT DISTINCT pw.account_id, pm.account_id
FROM postings pw JOIN postings pm ON pm.tx_id = pw.tx_id AND pm.account_id <> pw.account_id
JOIN accounts a ON a.account_id = pw.account_id
WHERE a.kind = 'wallet' AND pw.amount_minor < 0 AND pm.amount_minor > 0;

CREATE TABLE wallet_counters (
    account_id                       TEXT PRIMARY KEY,
    debited_since_strong_auth_minor  BIGINT NOT NULL
);
INSERT INTO wallet_counters (account_id, debited_since_strong_auth_minor)
SELECT p.account_id, SUM(-p.amount_minor)
FROM postings p JOIN transfers t ON t.tx_id = p.tx_id JOIN accounts a ON a.account_id = p.account_id
WHERE a.kind = 'wallet' AND p.amount_minor < 0
  AND t.created_at_ms > COALESCE((SELECT MAX(ip.passed_at_ms) FROM identity_passes ip
                                  WHERE ip.wallet_account_id = p.account_id), 0)
GROUP BY p.account_id;

CREATE INDEX requests_by_device_time ON requests (device_id, decided_at_ms);

-- The business time zone the day counters are kept in; a gateway started with another one
-- recounts them (ledger::align_calendar) before it takes a request.
CREATE TABLE ledger_calendar (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    utc_offset_minutes  INTEGER NOT NULL
);
INSERT INTO ledger_calendar (id, utc_offset_minutes) VALUES (1, 330);
