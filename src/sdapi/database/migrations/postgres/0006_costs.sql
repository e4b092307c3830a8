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
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rate_key     TEXT NOT NULL,  -- a batch key, a model|task key, or '*' (every call)
    units        DOUBLE PRECISION NOT NULL,
    steps        DOUBLE PRECISION NOT NULL,
    seconds      DOUBLE PRECISION NOT NULL,
    recorded_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX timings_by_key ON timings (rate_key, id);
CREATE TABLE costs (
    rate_key    TEXT PRIMARY KEY,
    overhead    DOUBLE PRECISION,  -- NULL for batch keys, which keep only a factor against their model's
    per_step    DOUBLE PRECISION,
    per_unit    DOUBLE PRECISION,
    scale       DOUBLE PRECISION NOT NULL DEFAULT 1,
    call_cap    INTEGER NOT NULL DEFAULT 1,  -- the most images the workers' calls make for it
    updated_at  DOUBLE PRECISION NOT NULL
);
