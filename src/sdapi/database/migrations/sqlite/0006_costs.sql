-- Serving core (issue 13). Batches no longer pad: a job's images and its call's denoising
-- steps price its place in line, and the size of the call that made its images is kept for
-- its meta (what an image's bytes depend on).
ALTER TABLE jobs ADD COLUMN images INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN call_steps INTEGER NOT NULL DEFAULT 20;
ALTER TABLE jobs ADD COLUMN call_size INTEGER;

-- One rate per unit is replaced by a model of a call's cost (sdapi.costs): the latest calls
-- per key, and what was fitted on them.
DROP TABLE rates;
CREATE TABLE timings (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    rate_key     TEXT NOT NULL,  -- a batch key, a model|task key, or '*' (every call)
    units        REAL NOT NULL,
    steps        REAL NOT NULL,
    seconds      REAL NOT NULL,
    recorded_at  REAL NOT NULL
);
CREATE INDEX timings_by_key ON timings (rate_key, id);
CREATE TABLE costs (
    rate_key    TEXT PRIMARY KEY,
    overhead    REAL,  -- NULL for batch keys, which keep only a factor against their model's
    per_step    REAL,
    per_unit    REAL,
    scale       REAL NOT NULL DEFAULT 1,
    call_cap    INTEGER NOT NULL DEFAULT 1,  -- the most images the workers' calls make for it
    updated_at  REAL NOT NULL
);
