# The orchestrator daemon as one container: the daemon, its DAG folder, and (unless
# ORCHESTRATOR_DATABASE__DSN points elsewhere) its own PostgreSQL under /var/lib/orchestrator.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql bash \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 orchestrator \
 && mkdir -p /var/lib/orchestrator /opt/orchestrator/dags \
 && chown -R orchestrator /var/lib/orchestrator /opt/orchestrator

WORKDIR /opt/orchestrator
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY executors ./executors
COPY storage ./storage
RUN pip install --no-cache-dir .
COPY config.toml /etc/orchestrator/config.toml
COPY dags ./dags

# PostgreSQL refuses to run as root; the daemon (and its embedded server) run as this user.
USER orchestrator
ENV ORCHESTRATOR_DAEMON__DAGS_FOLDER=/opt/orchestrator/dags \
    ORCHESTRATOR_DAEMON__STATE_DIR=/var/lib/orchestrator \
    ORCHESTRATOR_API__HOST=0.0.0.0
VOLUME ["/var/lib/orchestrator"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
# SIGTERM drains running tasks (daemon.shutdown_grace) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["orchestrator", "run", "--config", "/etc/orchestrator/config.toml"]
