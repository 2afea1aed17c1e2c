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
    reason text
);

CREATE INDEX webhook_delivery_webhook_idx ON webhook_delivery (webhook, received_at DESC, id DESC);
CREATE INDEX webhook_delivery_received_at_idx ON webhook_delivery (received_at);
