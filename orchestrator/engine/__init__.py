"""The engine: turns events (a run triggered, a task started or finished, a retry due) into
state changes, commits them, then acts on them. It talks to the world only through the ports."""
