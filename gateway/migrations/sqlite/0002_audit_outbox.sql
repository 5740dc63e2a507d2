-- The audit outbox: every audit event is first a row here, written in the same transaction as
-- what it describes (a batch's decisions) or on its own (front refusals, operator commands from
-- another process). The gateway's journal writer appends rows to the fsync'd audit journal in
-- outbox_id order and records each row's id in its journal record, so a crash between the two
-- neither loses nor repeats an event. Rows are pruned once their segment is sealed.
CREATE TABLE audit_outbox (
    outbox_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    event_json TEXT NOT NULL
);
