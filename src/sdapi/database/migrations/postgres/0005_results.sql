-- Model options (issue 8): whether the safety checker flagged (and replaced) any of a job's
-- images, for nsfw_content_detected in its answers.
ALTER TABLE jobs ADD COLUMN nsfw BOOLEAN NOT NULL DEFAULT FALSE;
