-- Keys an operator can change in place (PATCH /admin/api-keys/{id}) and switch off and on again.
-- disabled_at: when the key was switched off; NULL while it is enabled. revision: bumped by every
-- change to the row, so a change made from a stale read is refused instead of undoing another.
ALTER TABLE api_keys ADD COLUMN disabled_at INTEGER;
ALTER TABLE api_keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
