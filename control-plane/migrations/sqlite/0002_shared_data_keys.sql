-- A data key from the opt-in data-key cache protects several secrets. Its KMS encryption context names
-- this id instead of one API key id; NULL means the context names the row's own key id.
ALTER TABLE api_key_secrets ADD COLUMN data_key_id TEXT;
