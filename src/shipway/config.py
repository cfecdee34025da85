"""Every knob of shipway, read from the environment with the ``SHIPWAY_`` prefix."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One settings object; each field is ``SHIPWAY_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SHIPWAY_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        default=Path(".shipway"), description="Where the embedded mode keeps state."
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means SQLite in data_dir (embedded mode).",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker URL; empty means kombu's filesystem transport in data_dir.",
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8470
    runtime: Literal["docker", "swarm"] = Field(
        default="docker",
        description="Where replicas run: the one Docker engine of DOCKER_HOST, or a Docker "
        "Swarm (one service per replica, host-mode ports) whose managers are "
        "SHIPWAY_SWARM_MANAGERS, else DOCKER_HOST.",
    )
    swarm_managers: str = Field(
        default="",
        description="Comma-separated Docker endpoints (tcp://host:2376, unix:///path) of the "
        "swarm's managers; SHIPWAY_RUNTIME=swarm sends service operations there, failing over "
        "to the next manager when one does not answer or the swarm is electing a leader. "
        "DOCKER_HOST is then only the engine builds run on (this host's own). Empty: "
        "DOCKER_HOST is a manager and takes both.",
    )
    swarm_failover_seconds: float = Field(
        default=60.0,
        description="How long one Swarm operation looks for a manager that answers (a new "
        "leader's election included) before the job fails with swarm_unavailable.",
    )
    registry: str = Field(
        default="",
        description="host:port[/path] of a Docker registry every node pulls from; when set, "
        "builds push there and versions run from repository@sha256:digest (needed on a swarm).",
    )
    registry_api_url: str = Field(
        default="",
        description="Base URL of the registry's HTTP API for deletions (default "
        "https://<registry host>; http://… for a plain-HTTP registry).",
    )
    registry_gc_command: str = Field(
        default="",
        description="Command that runs the registry's garbage collection after image GC "
        "deleted images from it (e.g. docker-registry garbage-collect --delete-untagged "
        "/etc/docker/registry/config.yml); empty: the registry's operator runs it.",
    )
    replica_address: str = Field(
        default="127.0.0.1",
        description="The host address the Docker runtime publishes replica ports on; "
        "health checks and the router reach replicas there.",
    )
    replica_network: str = Field(
        default="",
        description="A Docker network the Docker runtime attaches replicas to (nothing is "
        "published then): the router and health checks reach each replica at its address on "
        "that network and its container port (for shipway itself running on that network).",
    )
    replica_hardening: bool = Field(
        default=True,
        description="Run replicas with no-new-privileges, every capability dropped but what "
        "the kind needs, a non-root user and (static sites) a read-only root filesystem; "
        "false: the image's defaults (for an app that needs root). See docs/security.md.",
    )
    replica_memory_mb: int = Field(
        default=512, ge=0, description="Memory limit of each replica in MiB; 0: none."
    )
    replica_cpus: float = Field(
        default=1.0, ge=0, description="CPU limit of each replica (1.0 = one core); 0: none."
    )
    replica_pids_limit: int = Field(
        default=256, ge=0, description="Most processes/threads in one replica; 0: none."
    )
    token_rate_limit_per_minute: int = Field(
        default=1200,
        ge=0,
        description="Requests one API token may send per minute (a token bucket refilled "
        "evenly; answered 429 with Retry-After beyond it); 0: no limit. Shared by every API "
        "process through Redis when the broker is Redis, else counted per process.",
    )
    token_rate_limit_burst: int = Field(
        default=120, ge=1, description="Requests one token may send at once above the rate."
    )
    token_last_used_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A token's last_used_at is written at most this often (one write per "
        "token per period, not one per request).",
    )
    public_url: str = Field(default="", description="Base URL clients use; default from host/port.")

    lease_seconds: float = Field(default=30.0, description="How long a claimed job stays leased.")
    heartbeat_seconds: float = Field(
        default=5.0, description="How often a running job renews its lease."
    )
    max_attempts: int = Field(
        default=3, description="Attempts before a lost job fails with worker_lost."
    )
    relay_interval_seconds: float = Field(default=1.0, description="Relay/reaper loop period.")
    redispatch_after_seconds: float = Field(
        default=30.0, description="Re-send a queued job to the broker if unclaimed this long."
    )
    job_deadline_seconds: float = Field(default=3600.0, description="Default deadline of a job.")
    idempotency_ttl_hours: float = Field(
        default=24.0, description="How long Idempotency-Key replays."
    )
    dispatch_timeout_seconds: float = Field(
        default=2.0, description="Broker connect/send timeout for one dispatch attempt."
    )
    max_request_bytes: int = Field(default=1_048_576, description="Largest JSON body accepted.")
    stuck_after_seconds: float = Field(
        default=900.0,
        description="A job queued (and due) longer than this is reported stuck (GET /queue).",
    )
    metrics_public: bool = Field(
        default=True,
        description="GET /metrics needs no token (serve it on an internal network only); "
        "false requires an admin token.",
    )

    max_upload_bytes: int = Field(default=100 * 1024 * 1024, description="Largest source archive.")
    max_unpacked_bytes: int = Field(
        default=512 * 1024 * 1024, description="Most bytes a source archive may unpack to."
    )
    max_source_files: int = Field(default=20_000, description="Most entries in a source archive.")
    min_free_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Free space on data_dir's filesystem below which storage is reported low "
        "(/readyz 'degraded', GET /queue storage.low, shipway_data_dir_* gauges and alert); "
        "everything still works. See docs/storage.md.",
    )
    reserved_free_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Free space on data_dir's filesystem kept for the database and build logs: "
        "at or below it a publish is refused with 507 insufficient_storage before it writes, "
        "and /readyz answers 503.",
    )
    base_image: str = Field(
        default="shipway/busybox:local",
        description="Base image of generated static-site images (must provide busybox httpd).",
    )
    build_timeout_seconds: float = Field(default=600.0, description="Deadline of one image build.")
    image_retention_hours: float = Field(
        default=24.0 * 14, description="How long an archived version's image stays for rollback."
    )

    keep_last_versions: int = Field(
        default=3,
        description="The newest N archived versions keep their images past the rollback window.",
    )
    gc_interval_seconds: float = Field(
        default=300.0, description="How often expired images are garbage-collected."
    )
    monitor_interval_seconds: float = Field(
        default=1.0,
        description="How often the relay's health monitor looks for releases due for a probe "
        "round (each environment policy sets its own probe interval); 0 disables it.",
    )
    monitor_max_parallel_probes: int = Field(
        default=16, description="Most replica health probes one monitor pass runs at once."
    )
    auto_promote_interval_seconds: float = Field(
        default=5.0,
        description="How often the relay checks auto-promote policies; 0 disables them.",
    )
    drain_timeout_seconds: float = Field(
        default=30.0, description="How long a replaced release may finish in-flight requests."
    )
    scale_down_delay_seconds: float = Field(
        default=60.0,
        description="How long replaced replicas stay warm (rollback is a router switch) "
        "before they are stopped and removed.",
    )
    stop_timeout_seconds: float = Field(
        default=10.0, description="SIGTERM grace before SIGKILL when stopping a replica."
    )
    up_stop_timeout_seconds: float = Field(
        default=30.0,
        description="`shipway up` stopping (SIGTERM, SIGINT, SIGHUP): how long its worker may "
        "finish the running job before it is killed.",
    )

    haproxy_binary: str = Field(default="haproxy", description="HAProxy executable (PATH or path).")
    router_dir: Path | None = Field(
        default=None, description="Router state folder (config, sockets); default data_dir/router."
    )
    router_bind_host: str = Field(default="127.0.0.1", description="Address public ports bind.")
    router_public_host: str = Field(
        default="", description="Host in public URLs; default the bind host (127.0.0.1 if any)."
    )
    router_port_range: str = Field(
        default="20000-20999", description="Public ports given to routes, 'low-high' inclusive."
    )
    apps_domain: str = Field(
        default="shipway.localhost",
        description="Domain under which every environment gets a generated hostname "
        "(<environment>.<deployment>-<id>.<apps domain>); *.localhost needs no DNS.",
    )
    acme_directory_url: str = Field(
        default="",
        description="ACME directory that issues certificates for every hostname over HTTP-01 "
        "(e.g. https://acme-v02.api.letsencrypt.org/directory); empty: no automatic HTTPS.",
    )
    acme_email: str = Field(default="", description="Contact address of the ACME account.")
    acme_ca_bundle: str = Field(
        default="", description="CA bundle trusted for the ACME server's own HTTPS (a test CA)."
    )
    certificate_renew_before_days: float = Field(
        default=30.0, description="Renew a certificate this long before it expires."
    )
    certificate_check_seconds: float = Field(
        default=5.0, description="How often the relay looks for certificates to issue or renew."
    )
    secrets_keys: str = Field(
        default="",
        description="Comma-separated Fernet keys that encrypt secrets at rest (config secrets, "
        "TLS private keys); the first encrypts, every one decrypts. Rotate: put a new key "
        "first, run `shipway secrets rotate`, then drop the old one. Empty: a key generated "
        "once in data_dir/secrets.key (mode 0600), for the embedded mode.",
    )
    router_daemon: bool = Field(
        default=True, description="HAProxy outlives shipway (else it dies with its parent)."
    )
    router_external: bool = Field(
        default=False,
        description="HAProxy is run by `shipway router run` (another container, maybe another "
        "network namespace): shipway only talks to it through the router folder's sockets, "
        "never starts or stops it, and judges it alive by its master socket, not by pid.",
    )
    router_start_timeout_seconds: float = Field(
        default=10.0, description="How long start/reload may take before failing."
    )
    router_hard_stop_after_seconds: float = Field(
        default=300.0, description="How long an old HAProxy worker may finish requests on reload."
    )
    router_request_timeout_seconds: float = Field(
        default=60.0, description="HAProxy client/server inactivity timeout."
    )
    router_http_port: int = Field(
        default=0,
        ge=0,
        lt=65536,
        description="Port of the shared HTTP listener that routes every environment by Host "
        "(and answers ACME challenges); 0: none, each environment only has its own port.",
    )
    router_https_port: int = Field(
        default=0,
        ge=0,
        lt=65536,
        description="Port of the shared HTTPS listener (certificates by SNI); 0: none.",
    )
    webhook_interval_seconds: float = Field(
        default=1.0, description="Webhook lane period in the relay (outbox + sends); 0: off."
    )
    webhook_timeout_seconds: float = Field(default=5.0, description="One webhook request.")
    webhook_concurrency: int = Field(default=8, ge=1, description="Webhook sends at once.")
    webhook_backoff_seconds: float = Field(
        default=5.0, description="First retry delay; doubles per attempt, at most 1 h."
    )
    webhook_max_attempts: int = Field(default=15, ge=1, description="Attempts per delivery.")
    webhook_deadline_seconds: float = Field(
        default=86400.0, description="A delivery is given up this long after it was created."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook URLs on loopback, private, link-local, unique-local addresses.",
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'shipway.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL, defaulting to the filesystem transport."""
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Folder of the filesystem transport (embedded mode)."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_router_dir(self) -> Path:
        """The router state folder, defaulting to ``data_dir/router``."""
        return (self.router_dir or self.data_dir / "router").resolve()

    @property
    def router_ports(self) -> tuple[int, int]:
        """``router_port_range`` as ``(low, high)``, both inclusive."""
        low, sep, high = self.router_port_range.partition("-")
        first, last = int(low), int(high if sep else low)
        if not 0 < first <= last < 65536:
            raise ValueError(f"bad router_port_range {self.router_port_range!r}")
        return first, last

    @property
    def swarm_manager_endpoints(self) -> list[str]:
        """``swarm_managers`` as a list (empty: the manager is DOCKER_HOST)."""
        return [part.strip() for part in self.swarm_managers.split(",") if part.strip()]

    @property
    def base_url(self) -> str:
        """Public base URL of the API."""
        return self.public_url.rstrip("/") or f"http://{self.api_host}:{self.api_port}"


class _SettingsCache:
    """The process-wide settings, read once; ``cache_clear`` makes the next call read again.

    Unlike ``functools.lru_cache``, a clear always wins over a read already under way: a
    thread that began reading the environment before the clear (a lease keeper waking up
    while a test or a reload changes the environment) returns what it read but does not
    store it, so it cannot bring back the settings the clear discarded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._generation = 0

    def __call__(self) -> Settings:
        settings = self._settings
        if settings is not None:
            return settings
        with self._lock:
            generation = self._generation
        settings = Settings()
        with self._lock:
            if generation == self._generation and self._settings is None:
                self._settings = settings
            return self._settings or settings

    def cache_clear(self) -> None:
        """Forget the settings read so far (and any read still under way)."""
        with self._lock:
            self._generation += 1
            self._settings = None


get_settings = _SettingsCache()
"""The process-wide settings (cached; tests clear with ``get_settings.cache_clear()``)."""
