-- Metrics (issue 6): counters and histogram buckets every process adds to, in the transaction
-- of the event they count (a job's end, a webhook attempt, a batch), so /metrics on any API
-- replica reports the whole deployment, exactly, across restarts.
CREATE TABLE metrics (
    name    TEXT NOT NULL,   -- Prometheus sample name, e.g. sdapi_jobs_finished_total
    labels  TEXT NOT NULL,   -- its label set as exposed, e.g. status="success"
    value   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, labels)
);
