-- The store's queries for webhooks (named blocks, see storage/sql/__init__.py).

-- name: insert_webhook_deliveries
-- The delivery log, written in batches (arrays unnested server-side: one statement per batch).
INSERT INTO webhook_delivery (webhook, delivery_id, received_at, status, created, dag_id, run_id,
                              asset_uri, asset_event_id, reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::integer[], $5::boolean[],
                     $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[]);

-- name: list_webhook_deliveries
-- One page of a webhook's deliveries, newest first (webhook_delivery_webhook_idx).
SELECT webhook, delivery_id, received_at, status, created, dag_id, run_id, asset_uri, asset_event_id,
       reason
FROM webhook_delivery
WHERE webhook = $1
ORDER BY received_at DESC, id DESC
LIMIT $2 OFFSET $3;

-- name: count_webhook_deliveries
SELECT count(*) FROM webhook_delivery WHERE webhook = $1;

-- name: claim_webhook_body
-- The first delivery of this body within the window claims it and names its idempotency key;
-- a row whose window has passed is claimed again. Returns nothing when the row is still in force.
INSERT INTO webhook_dedup (webhook, body_sha256, idempotency_key, expires_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (webhook, body_sha256) DO UPDATE
    SET idempotency_key = EXCLUDED.idempotency_key, expires_at = EXCLUDED.expires_at
    WHERE webhook_dedup.expires_at <= $5
RETURNING idempotency_key;

-- name: get_webhook_body_claim
SELECT idempotency_key FROM webhook_dedup WHERE webhook = $1 AND body_sha256 = $2;

-- name: prune_webhook_deliveries
-- Retention: entries of the delivery log older than the cutoff (webhook_delivery_received_at_idx).
DELETE FROM webhook_delivery WHERE received_at < $1;

-- name: prune_webhook_dedup
-- Claims whose window has passed decide nothing any more.
DELETE FROM webhook_dedup WHERE expires_at <= $1;
