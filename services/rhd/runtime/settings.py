"""One frozen settings object read from RHD_* environment variables; defaults run the embedded stack."""

from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RHD_", frozen=True)
    # How a client reaches the broker, as whom: what differs between two services of one line.
    CONNECTION: ClassVar[frozenset[str]] = frozenset(
        {"bootstrap_servers", "security_protocol", "sasl_username", "sasl_password", "sasl_password_file", "ssl_cafile"}
    )

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    # The broker the project starts itself (`rhd broker`, `rhd demo`, the tests' stacks): tansu, the zero-install
    # default (memory storage, no retention), or kafka, Apache Kafka 4 in KRaft mode from kafka/pom.xml's jars
    # (`make kafka`; needs Java 17). Services only ever see bootstrap_servers.
    broker: Literal["tansu", "kafka"] = "tansu"
    kafka_libs: Path | None = None  # the jars (default: kafka/target/libs of this checkout)
    kafka_heap: str = "512m"
    kafka_retention_ms: int = 0  # records older are deleted (0: Kafka's default, a week); compose keeps 48 h
    # Idempotent producers (a retried send is written once): on for Apache Kafka (the stacks set it with
    # RHD_BROKER=kafka; compose and k8s set it), off for Tansu, which has no InitProducerId. The stages' own
    # deduplication by key stays on either way.
    idempotence: bool = False
    # Transactions for the read-process-write stages that must write each key once (assemble, diagnose): a batch's
    # outputs and its input offsets committed atomically, and every consumer reading committed records only. Apache
    # Kafka only (the stacks set it with RHD_BROKER=kafka; compose and k8s set it); needs RHD_IDEMPOTENCE. Their
    # deduplication by key stays (replays, republished uploads, a zombie replica).
    transactions: bool = False
    # How this service authenticates to the broker: PLAINTEXT (the loopback brokers of `rhd demo`), or SASL_SSL with
    # SCRAM-SHA-512 as its own principal (one per service and per hospital; ACLs grant each what it needs). The
    # password from RHD_SASL_PASSWORD_FILE (a mounted secret) or RHD_SASL_PASSWORD; the broker's certificate checked
    # against RHD_SSL_CAFILE.
    security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    # The Apache Kafka the project starts itself (RHD_BROKER=kafka) with SASL_SSL, one principal per service and per
    # hospital in RHD_HOSPITALS (a JSON list), and ACLs (rhd.local.security); made under the stack's workdir.
    broker_secure: bool = False
    hospitals: list[str] = []
    partitions: int = 4
    # Replicas of each topic `rhd topics` creates: 3 on a production cluster (min.insync.replicas 2 needs >= 2).
    replication_factor: int = 1
    max_message_bytes: int = 1_000_000
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    fetch_max_records: int = 32
    # How split sends frames: store (the frame store, rhd.runtime.frames: each video's frames written once under
    # blob_dir, the records carry a reference), raw (~230 kB a 240x320 frame in every record of four topics) or png
    # (~70 kB, ~5 ms to encode and 1-2 ms to decode in each later stage). Every reader accepts all three. With store
    # and one region, deid keeps its cleaned frames in the frame store and split reads them there (no lossless copy).
    frame_codec: Literal["store", "raw", "png"] = "store"
    # How long the frame store keeps a video's frames: past the study deadline, a dead letter's replay and the
    # evidence frames a page shows. About 230 kB a frame: 24 h at 64 frames/s is some 1.3 TB.
    frame_retention_s: float = 24 * 3600.0
    # Where payloads too large for a message go (claim check): a directory every service can read.
    blob_dir: Path = Path("var/blobs")
    # The line across two regions (docs/architecture.md), each with its own Kafka cluster and blob store: deid in the
    # home region, the rest where the GPUs are, MirrorMaker 2 between. deid then sends each de-identified video too
    # large to go inline ahead of its study, in pieces on studies.deidentified.v1, and split puts it in its own
    # region's store: the bytes cross with the records, not through a store both regions read. `rhd topics`
    # creates the topics of this process's region only (RHD_REGION; home when it is RHD_HOME_REGION).
    two_regions: bool = False
    # Threads that run a stage's CPU work off the event loop.
    workers: int = 2
    # HTTP port for /metrics, /healthz, /readyz (0: pick a free one and log it).
    http_port: int = 0
    http_host: str = "127.0.0.1"
    # Model server (TensorFlow Serving gRPC API, or the embedded `rhd model-server`).
    model_server: str = "127.0.0.1:8500"
    view_model_name: str = "view"
    view_model_version: int = 0  # 0: the latest version the server has
    valve_model_name: str = "valve"
    valve_model_version: int = 0
    # The CA that signed the model server's certificate: set, the gRPC channel is TLS (TF Serving's
    # --ssl_config_file on the server side); unset, plaintext.
    model_server_ca: Path | None = None
    model_timeout_s: float = 10.0
    model_max_batch: int = 32
    model_max_wait_ms: float = 5.0
    # While the model server does not answer, a frame waits (its stage blocked, its partition not consumed) this
    # long, then is dead-lettered FAILED with the reason: a little under the study deadline, so an outage shorter
    # than that delays studies but leaves them COMPLETE.
    model_retry_for_s: float = 240.0
    models_dir: Path = Path("models")
    # Input bounds (deid and split refuse a video beyond them, saying why; the rest of its study goes on): frames per
    # video (30 s at 60 frames/s), pixels per frame (1920 x 1080), frames per upload (15 videos of 3 s at 60 frames/s
    # pass, with room).
    max_video_frames: int = 1_800
    max_frame_pixels: int = 1920 * 1080
    max_upload_frames: int = 4_000
    max_decode_s: float = 120.0  # wall time to decode one video (a pathological file that decodes forever)
    # assemble: a study not fully accounted for this long after its first record is emitted INCOMPLETE.
    study_deadline_s: float = 300.0
    assemble_remember_s: float = 86_400.0  # after a restart, studies emitted this long ago are still known
    # A stage that writes each key once (assemble, diagnose) reads its output back on every assignment: each try
    # of that read is given this long, and tried again (the partitions wait) until it succeeds.
    recovery_read_timeout_s: float = 30.0
    # /healthz fails when the consume loop has not come round for this long (stuck, not merely busy: a batch's
    # records each finish well within it).
    stuck_after_s: float = 120.0
    log_level: str = "INFO"
    # Privacy. Where this service runs, and where the identifiable data lives (the patients' home region, Brazil in
    # production): services that read identifiable data refuse to start anywhere else.
    region: str = "home"
    home_region: str = "home"
    # Keys (rhd.runtime.secrets): a mounted secret in production; `rhd keys init` makes them for one machine.
    secrets_dir: Path = Path("var/secrets")
    # De-identification: the policy file (empty: the one shipped beside rhd.deid) and the profile the line's
    # output is made under (one whose region is gpu: it leaves the home region).
    deid_policy: Path | None = None
    deid_profile: str = "analysis"
    # The web page's database: an SQLite file's path, or a PostgreSQL server's postgresql:// address (production;
    # no password in it: libpq reads PGPASSFILE or PGPASSWORD). Empty: web.sqlite in `rhd up`'s working directory.
    web_db: str = ""
    # `rhd train video` on a cluster: every worker's host:port, in index order (its own index from an indexed Job's
    # JOB_COMPLETION_INDEX); TF_CONFIG, when set, takes its place. Empty: one process.
    train_worker_hosts: str = ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
