-- Delivery (issue 5): webhooks through an outbox, per-job deadlines, temporary outputs,
-- retention, and track_id de-duplication.

-- "" without a webhook; pending, retrying, delivered or failed (gave up) with one.
ALTER TABLE jobs ADD COLUMN webhook_status TEXT NOT NULL DEFAULT '';
-- A job still queued at this time is failed instead of started.
ALTER TABLE jobs ADD COLUMN deadline_at REAL;
-- Temporary outputs (temp: "yes"): the job's files are removed at this time.
ALTER TABLE jobs ADD COLUMN keep_until REAL;

-- A repeated track_id under one key finds its first job.
CREATE INDEX jobs_by_track ON jobs (owner, track_id, created_at) WHERE track_id IS NOT NULL;
-- The retention sweep walks finished jobs oldest first.
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE status IN ('success', 'failed', 'cancelled');
-- Deadlines are checked on every claim: only queued jobs that have one.
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE status = 'queued' AND deadline_at IS NOT NULL;

-- The outbox: one row per webhook a job's final state calls for, written in the same
-- transaction as that state, so a crash between finishing and sending loses nothing.
CREATE TABLE webhook_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,      -- the webhook-id header: the same on every retry
    job_id           INTEGER NOT NULL,
    event            TEXT NOT NULL,             -- the job's final status
    url              TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    -- When it is due; while a dispatcher holds it, the end of that claim.
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    delivered_at     REAL,
    UNIQUE (job_id, event)
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'pending';
