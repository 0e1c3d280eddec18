-- The server's own words when a request failed (scrubbed of secrets, cut to 500 characters): `reject_reason`
-- keeps the short stable code (http_400), this says why (e.g. the prompt exceeds the model's context).
ALTER TABLE generations ADD COLUMN error_message VARCHAR;
