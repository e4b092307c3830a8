-- Limits (issue 6): keys may carry their own caps, and the queue counts a key's live jobs.

-- Jobs a key may have queued or running at once; NULL: the server's --max-queued-per-key.
ALTER TABLE api_keys ADD COLUMN max_queued INTEGER;
-- Generation requests a key may make per minute; NULL: the server's --rate-limit.
ALTER TABLE api_keys ADD COLUMN rate_per_minute REAL;

-- Counting a key's live jobs at every submission stays as small as the live queue.
CREATE INDEX jobs_live_by_owner ON jobs (owner) WHERE status IN ('queued', 'processing');
