-- Assets (Airflow 3's data-aware scheduling): the assets known by URI and their events.
CREATE TABLE asset (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uri text NOT NULL CONSTRAINT asset_uri_key UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE asset_event (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id bigint NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    extra jsonb NOT NULL DEFAULT '{}',
    "timestamp" timestamptz NOT NULL
);
