-- API keys: only the SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);

CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids only grow, never reused
    owner              TEXT NOT NULL,
    status             TEXT NOT NULL,
    model              TEXT NOT NULL,          -- workers claim only models they serve
    request            TEXT NOT NULL,          -- GenerationRequest as JSON
    batch_key          TEXT NOT NULL,
    rate_key           TEXT NOT NULL,
    work_units         REAL NOT NULL,
    output_names       TEXT NOT NULL,          -- JSON array
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at         REAL NOT NULL,
    started_at         REAL,
    finished_at        REAL,
    lease_id           TEXT,
    lease_expires_at   REAL,
    worker_id          TEXT,
    progress           REAL NOT NULL DEFAULT 0,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,  -- the owner asked to stop a running job
    generation_seconds REAL,
    error              TEXT,
    webhook            TEXT,
    track_id           TEXT,
    echo               TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_by_status ON jobs (status, model, id);
CREATE INDEX jobs_by_owner ON jobs (owner, id);
CREATE INDEX jobs_by_lease ON jobs (lease_id);

-- Live workers announce themselves and refresh seen_at; the ETA divides work among them.
CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    device      TEXT NOT NULL,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    seen_at     REAL NOT NULL
);

-- Measured generation speed (seconds per work unit) per model and task, for honest ETAs.
CREATE TABLE rates (
    rate_key          TEXT PRIMARY KEY,
    seconds_per_unit  REAL NOT NULL,
    samples           INTEGER NOT NULL,
    call_rows         INTEGER NOT NULL DEFAULT 1,  -- images per pipeline call (batch keys)
    updated_at        REAL NOT NULL
);
