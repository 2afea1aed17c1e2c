-- Webhook deliveries: every delivery, accepted or refused (never a secret or a signature value),
-- and the idempotency keys that make a redelivered webhook create nothing.
CREATE TABLE webhook_delivery (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook text NOT NULL,
    delivery_id text,
    received_at timestamptz NOT NULL,
    status integer NOT NULL,
    created boolean NOT NULL DEFAULT false,
    dag_id text,
    run_id text,
    asset_uri text,
    asset_event_id bigint,
    reason text
);

CREATE INDEX webhook_delivery_webhook_idx ON webhook_delivery (webhook, received_at DESC, id DESC);
CREATE INDEX webhook_delivery_received_at_idx ON webhook_delivery (received_at);

-- Deliveries without a delivery id are deduplicated by the hash of their body within the
-- webhook's dedup_window: the first one claims the row (and names the run id), an expired row is
-- claimed again by the next, so the same body is exactly-once per window.
CREATE TABLE webhook_dedup (
    webhook text NOT NULL,
    body_sha256 text NOT NULL,
    idempotency_key text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (webhook, body_sha256)
);

CREATE INDEX webhook_dedup_expires_at_idx ON webhook_dedup (expires_at);
