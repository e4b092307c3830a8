-- The SQLite schema (migrations/sqlite/0001_initial.sql), column for column, in PostgreSQL terms.
-- Times are epoch seconds in DOUBLE PRECISION, as in SQLite, and always come from the
-- application's clock, never from now(). JSON is kept as TEXT: it round-trips byte for byte,
-- exactly as the SQLite backend stores it, and nothing queries inside it.

-- API keys: only the SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    revoked_at  DOUBLE PRECISION
);

CREATE TABLE jobs (
    -- ids only grow, never reused (a sequence never hands a value out twice)
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner              TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN
                           ('queued', 'processing', 'success', 'failed', 'cancelled', 'expired')),
    model              TEXT NOT NULL,             -- workers claim only models they serve
    request            TEXT NOT NULL,             -- GenerationRequest as JSON
    batch_key          TEXT NOT NULL,
    rate_key           TEXT NOT NULL,
    work_units         DOUBLE PRECISION NOT NULL,
    output_names       TEXT NOT NULL,             -- JSON array
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at         DOUBLE PRECISION NOT NULL,
    started_at         DOUBLE PRECISION,
    finished_at        DOUBLE PRECISION,
    lease_id           TEXT,
    lease_expires_at   DOUBLE PRECISION,
    worker_id          TEXT,
    progress           DOUBLE PRECISION NOT NULL DEFAULT 0,
    cancel_requested   BOOLEAN NOT NULL DEFAULT FALSE,  -- the owner asked to stop a running job
    generation_seconds DOUBLE PRECISION,
    error              TEXT,
    webhook            TEXT,
    track_id           TEXT,
    echo               TEXT NOT NULL DEFAULT '{}'
);
-- Partial indexes stay as small as the live queue, however many finished jobs pile up.
-- The claim's window and queue positions, in line order, with and without a model filter:
CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
CREATE INDEX jobs_queued_by_model ON jobs (model, id) WHERE status = 'queued';
-- Reaping expired leases, and ETA sums over running jobs:
CREATE INDEX jobs_processing ON jobs (lease_expires_at) WHERE status = 'processing';
-- Heartbeats find the jobs a lease holds:
CREATE INDEX jobs_by_lease ON jobs (lease_id) WHERE lease_id IS NOT NULL;
-- A key sees only its own jobs:
CREATE INDEX jobs_by_owner ON jobs (owner, id);

-- Live workers announce themselves and refresh seen_at; the ETA divides work among them.
CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         BIGINT NOT NULL,
    device      TEXT NOT NULL,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    seen_at     DOUBLE PRECISION NOT NULL
);

-- Measured generation speed (seconds per work unit) per model and task, for honest ETAs.
CREATE TABLE rates (
    rate_key          TEXT PRIMARY KEY,
    seconds_per_unit  DOUBLE PRECISION NOT NULL,
    samples           INTEGER NOT NULL,
    call_rows         INTEGER NOT NULL DEFAULT 1,  -- images per pipeline call (batch keys)
    updated_at        DOUBLE PRECISION NOT NULL
);
