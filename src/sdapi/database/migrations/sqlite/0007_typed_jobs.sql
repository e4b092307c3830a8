-- One room per feature (issue 14): what behaviour depends on gets a column instead of a key in
-- the echo JSON (which keeps what answers only say back), and the prompts a worker drew from,
-- when it rewrote them (multi_lingual now translates in the worker, where torch lives).
ALTER TABLE jobs ADD COLUMN base_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_progress INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rendered TEXT;
