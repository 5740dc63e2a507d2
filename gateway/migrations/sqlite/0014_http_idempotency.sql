-- HTTP API writes: the first answer to each (caller, Idempotency-Key), kept so a retry gets
-- it again, and the hash of what was asked, so the same key with another request is refused.
CREATE TABLE http_idempotency (
    caller           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_sha256   BLOB NOT NULL,
    status           INTEGER NOT NULL,
    response_json    TEXT NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
