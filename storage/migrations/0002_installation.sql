-- The database's installation id: written once by the first daemon (not by this migration, so
-- databases copied from one template each get their own), carried in the environment of every
-- try the daemon starts, so that a restarted daemon recognises its own processes for certain.
CREATE TABLE installation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    installation_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
