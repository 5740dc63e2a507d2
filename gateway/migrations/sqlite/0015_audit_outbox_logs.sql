-- Each gateway replica keeps its own audit log (its own journal, chain and log id) over one
-- shared database: an outbox row names the log it belongs to, and its place is a place in
-- that log's sequence. Rows written before this migration have an empty log id; the first
-- gateway to open its journal afterwards takes them into its log (Store::adopt_unlogged_audit_rows).
CREATE TABLE audit_outbox_logs (
    log_id     TEXT NOT NULL DEFAULT '',
    outbox_id  INTEGER NOT NULL,
    event_json TEXT NOT NULL,
    mac        BLOB,
    PRIMARY KEY (log_id, outbox_id)
);
INSERT INTO audit_outbox_logs (log_id, outbox_id, event_json, mac)
    SELECT '', outbox_id, event_json, mac FROM audit_outbox;
DROP TABLE audit_outbox;
ALTER TABLE audit_outbox_logs RENAME TO audit_outbox;
