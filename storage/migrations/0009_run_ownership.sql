-- Scale-out: several daemons (replicas) on one database, coordinated only by the database.
--
-- A run is owned by one replica at a time (dag_run.owner). A replica's lease is its daemon
-- row's lease_until, renewed by its heartbeat with the database's clock (now()), never a
-- replica's. Every commit a replica makes is fenced in SQL on `owner = me` while its lease
-- holds; a run whose owner's lease ran out is claimed by a survivor (FOR UPDATE SKIP LOCKED).
-- Additive only: every new column is nullable or has a default, so a replica of the previous
-- version is refused by the version check rather than broken by the schema.
ALTER TABLE dag_run ADD COLUMN owner text;
ALTER TABLE daemon ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now();
ALTER TABLE daemon ADD COLUMN version text NOT NULL DEFAULT '';
ALTER TABLE daemon ADD COLUMN api_url text;

-- The runs a replica owns (fencing, takeover, `orchestrator daemons`).
CREATE INDEX dag_run_owner_active_idx ON dag_run (owner) WHERE state IN ('queued', 'running');
-- Admission counts a DAG's running runs against max_active_runs.
CREATE INDEX dag_run_dag_id_state_idx ON dag_run (dag_id) WHERE state IN ('queued', 'running');

-- Replicas sleep until a run waits to be started: a run created (or queued again) without an
-- owner wakes them, whichever replica or transaction created it (the payload is the DAG id;
-- PostgreSQL folds equal payloads of one transaction into one notification).
CREATE FUNCTION orchestrator_notify_waiting_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_runs', NEW.dag_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER dag_run_waiting_insert AFTER INSERT ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.owner IS NULL)
    EXECUTE FUNCTION orchestrator_notify_waiting_run();

CREATE TRIGGER dag_run_waiting_update AFTER UPDATE OF state, owner ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.owner IS NULL
                       AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.owner IS NOT NULL))
    EXECUTE FUNCTION orchestrator_notify_waiting_run();

-- A running run whose owner let go of it (a replica shutting down hands its runs over): the
-- survivors claim it at once instead of waiting for a lease to run out.
CREATE FUNCTION orchestrator_notify_released_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_released', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER dag_run_released AFTER UPDATE OF owner ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'running' AND NEW.owner IS NULL AND OLD.owner IS NOT NULL)
    EXECUTE FUNCTION orchestrator_notify_released_run();

-- The replicas' shared secret: a replica that forwards a request to another (an operation on a
-- run the other drives, a log only the other has) signs it with this, so the other trusts the
-- identity the first one authenticated. Made by the first replica; readable only by those who
-- can read the database, who could do anything already.
CREATE TABLE replica_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret text NOT NULL
);
