"""Every knob of the service, from the command line or ``SERVING_*`` environment variables.

One pydantic-settings class, so each setting has one name, one default and
one description; ``python -m service --help`` and the README list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bundle.images import DEFAULT_MAX_PIXELS, SERVED_FORMATS

Provider = Literal["auto", "cpu", "cuda"]


class ServiceSettings(BaseSettings):
    """Settings of one service process; environment variables are ``SERVING_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="forbid", protected_namespaces=())

    # -- where and what to serve -------------------------------------------------------------
    models: Path = Field(Path("models"), description="Model repository root: <models>/<name>/<version>/.")
    host: str = Field("0.0.0.0", description="Interface to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    rollout: Path | None = Field(None, description="Rollout policy file (YAML); none means highest version serves.")
    model_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Serve only these model names (comma-separated); empty serves every model in the repository.",
    )
    watch_interval_s: float = Field(
        2.0, ge=0, description="Seconds between repository scans for added/removed versions; 0 disables watching."
    )
    state_url: str = Field(
        "",
        description="Shared state store for rollout state, audit trail, prediction log and feedback: empty for a "
        "SQLite file (state_path), or postgresql://... for one database shared by every replica.",
    )
    state_path: Path | None = Field(
        None,
        description="The SQLite state file when state_url is empty; default: beside the rollout file "
        "(<rollout>.state.sqlite), else state.sqlite in the working directory.",
    )
    regions: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Known X-Region values (comma-separated); any other region is labelled 'other' in metrics.",
    )
    default_region: str = Field(
        "",
        description="Region of requests that carry no X-Region header (a per-region deployment knows where it "
        "runs); always a known region. Empty: such requests are labelled 'other'.",
    )
    region_header: str = Field("X-Region", min_length=1, description="Request header naming the client's region.")
    rollout_poll_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between reads of the state store; a decision on any replica is obeyed "
        "by every replica within this interval.",
    )
    rollout_tick_s: float = Field(
        0.5,
        gt=0,
        description="Seconds between rollout checks: rollout file changes (a changed file is read "
        "once it has stayed unchanged for one tick), guardrails, gauges.",
    )
    new_versions: Literal["hold", "shadow", "latest"] = Field(
        "hold",
        description="What a version that appears in the repository gets: hold (loaded and reachable pinned, no "
        "unpinned traffic until promoted; the serving version is kept in the state store), shadow (as hold, and "
        "it starts as a shadow candidate), latest (the newest version takes all unpinned traffic).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the rollout admin endpoints (PUT, shadow, advance, promote, rollback) and "
        "python -m service rollout's steering verbs; unset refuses them.",
    )
    reviewer_token: SecretStr | None = Field(
        None, description="Bearer token for the review queue (GET /v1/predictions); the admin token works too."
    )
    shadow_max_in_flight: int = Field(
        32,
        ge=0,
        description="Most shadow runs in progress at once; beyond it (or with stable's queue half full) "
        "shadow copies are shed.",
    )
    shadow_max_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Most of the service's time shadow runs may take (fraction of each half "
        "second, estimated from what each copy cost); copies beyond it are shed.",
    )

    # -- the state store's bounds and the audit trail's retention (docs/rollout.md) -----------------------
    store_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest any call to a store (rollout state, audit trail, prediction log, feedback) may wait, "
        "for its turn, a connection or an answer, before it fails: a hung database never holds a thread longer.",
    )
    audit_retention_days: float = Field(
        365.0, gt=0, description="Rollout audit entries are kept this long (pruned by the rollout, at most hourly)."
    )

    # -- ONNX Runtime ------------------------------------------------------------------------
    provider: Provider = Field(
        "auto", description="Execution provider: auto (CUDA when available, else CPU), cpu, or cuda (must get CUDA)."
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU index used by the CUDA provider.")
    intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads per run; default: the container's CPU quota."
    )
    inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime inter-op threads (parallel graph branches).")
    ort_spinning: bool = Field(
        False, description="Let idle ONNX Runtime threads spin-wait (lower latency, but steals CPU from decoding)."
    )
    inline_decode_max_pixels: int = Field(
        65_536,
        ge=0,
        description="Raw images up to this many pixels are decoded on the event loop, where a thumbnail costs less "
        "than a thread hand-off; larger ones (and every JSON, multipart or CSV body) go to the preprocessing pool. "
        "0 sends everything to the pool.",
    )
    ignore_unknown_columns: bool = Field(
        False,
        description="Tabular models: ignore row keys and CSV columns the model does not know, instead of answering "
        "422 naming them (a misspelled column would otherwise be read as missing).",
    )
    inline_decode_max_bytes: int = Field(
        32_768,
        ge=0,
        description="Only raw image bodies up to this many bytes are decoded on the event loop, so the loop never "
        "parses more than this much of any image's headers or chunks.",
    )
    preprocess_threads: int | None = Field(
        None, ge=1, description="Threads decoding images and tables; default: the container's CPU quota."
    )
    max_preprocess_backlog: int = Field(
        64, ge=1, description="Most requests waiting for a preprocessing thread; beyond it requests get 503 at once."
    )

    # -- dynamic batching --------------------------------------------------------------------
    max_batch_size: int = Field(
        32,
        ge=1,
        description="Most items in one ONNX Runtime run. Left unset, each version caps its batches at the "
        "smallest size that runs about as fast per item as the best, timed at load (docs/batching.md); "
        "set, it is the cap as it is.",
    )
    inline_inference: bool | None = Field(
        None,
        description="Run batches on the event loop (true) or in a runtime thread (false); unset: on the loop "
        "for a model whose largest batch runs in under 1 ms, timed at load.",
    )
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a free runtime waits for a batch to fill; 0 takes whatever is queued at once.",
    )
    max_queue_size: int = Field(
        1024,
        ge=1,
        description="Most items waiting per version (a bound on memory); beyond it requests get 503, unless the "
        "queue gets below it within max_queue_wait_s (requests still sending their bodies always count).",
    )
    max_queue_wait_s: float = Field(
        1.0,
        gt=0,
        description="A request is refused (503) when the requests ahead of it would take longer than this to "
        "clear, judged from the version's recent throughput: the queue's limit adapts to the model and machine.",
    )
    batches_in_flight: int = Field(1, ge=1, description="ONNX Runtime runs in progress at once per version.")
    pad_batches: bool = Field(
        False, description="Pad batches up to fixed sizes (powers of two, and max_batch_size); useful on GPU."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Per-request deadline; items still queued when it passes are dropped (504)."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 (queue full).")

    # -- request limits ----------------------------------------------------------------------
    max_body_bytes: int = Field(20_000_000, ge=1, description="Largest request body in bytes (413 beyond).")
    max_items_per_request: int = Field(64, ge=1, description="Most images or rows in one request (413 beyond).")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest decoded image in pixels, a decompression-bomb guard (413)."
    )
    max_request_pixels: int = Field(
        50_000_000, ge=1, description="Most decoded pixels of all the images of one request together (413)."
    )
    max_columns: int = Field(512, ge=1, description="Most columns in one row of JSON or CSV (413).")
    max_cells_per_request: int = Field(
        32_768, ge=1, description="Most cells (row x column values) in one request (413)."
    )
    image_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SERVED_FORMATS),
        description="Image formats decoded, checked against the bytes (comma-separated; TIFF only if listed).",
    )

    # -- connections (see service.http.connections) -------------------------------------------------
    max_header_bytes: int = Field(65_536, ge=1024, description="Largest request line plus headers in bytes (431).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a whole request line and headers (408)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a request may take to send its whole body after the headers (408)."
    )
    keepalive_timeout_s: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    max_connections: int = Field(
        2048, ge=1, description="Most open client connections; beyond it a new connection gets 503 and is closed."
    )
    max_in_flight_requests: int = Field(
        1024, ge=1, description="Most requests being served at once; beyond it requests get 503 at once."
    )

    # -- monitoring (docs/monitoring.md) -----------------------------------------------------
    monitoring: bool = Field(
        True, description="Out-of-domain flags on every prediction, drift windows and estimated accuracy."
    )
    drift_window: int = Field(1_000, ge=1, description="Items in each drift window (per version and region).")
    drift_min_items: int = Field(
        200,
        ge=1,
        description="Items a drift window must hold before its features get a verdict (or the drift window, if "
        "smaller); until then they are 'collecting', which the guardrails do not judge.",
    )
    drift_warn: float = Field(
        0.1, ge=0, description="PSI from which a feature's verdict is 'warn' (if also above its noise level)."
    )
    drift_threshold: float = Field(
        0.2, ge=0, description="PSI from which a feature's verdict is 'drift' (if also above its noise level)."
    )
    ood_image_slack: float = Field(
        0.1,
        ge=0,
        description="Images are out-of-domain when a summary lies outside the training range widened by this "
        "share of the range (or of the value, whichever is larger).",
    )
    ood_range_slack: float = Field(
        0.1,
        ge=0,
        description="Table values are out of range when outside the training minimum..maximum widened by this "
        "share of it on each side.",
    )
    monitor_queue_size: int = Field(
        10_000, ge=1, description="Observations waiting for the monitor thread; beyond it they are dropped, counted."
    )
    feedback_window: int = Field(1_000, ge=1, description="Answers in each live accuracy window.")
    prediction_log: bool = Field(
        True,
        description="Log predictions: to the shared store when state_url is postgresql://..., else to "
        "prediction_log_path (needs monitoring).",
    )
    prediction_log_path: Path = Field(Path("predictions.sqlite"), description="The SQLite prediction log file.")
    prediction_log_sample_rate: float = Field(1.0, ge=0, le=1, description="Share of requests logged (0..1).")
    prediction_log_retention_days: float = Field(30.0, gt=0, description="Logged predictions are kept this long.")
    prediction_log_images: Literal["sample", "all", "none"] = Field(
        "sample",
        description="Which logged images keep their bytes (base64, up to the size cap), for datasets built from the "
        "log: sample (the items sent to the review queue and a random share, prediction_log_image_sample), all, or "
        "none; true and false read as all and none. Within the log's budget (prediction_log_max_bytes).",
    )
    prediction_log_image_sample: float = Field(
        0.05, ge=0, le=1, description="With prediction_log_images=sample: the share of other logged images kept."
    )
    prediction_log_image_max_bytes: int = Field(
        262_144, ge=0, description="Largest image whose bytes are logged (prediction_log_images)."
    )
    prediction_log_buffer: int = Field(
        10_000, ge=1, description="Records waiting for the log writer; beyond it records are dropped and counted."
    )
    # who may send ground truth, and how much room the log takes (docs/monitoring.md)
    feedback_token: SecretStr | None = Field(
        None,
        description="Bearer token for POST /v1/feedback only (a system that sends ground truth but must not read "
        "logged inputs); the reviewer and admin tokens work too. With none of them set, feedback is refused.",
    )
    feedback_open: bool = Field(
        False,
        description="Take feedback without any token. Anyone who can reach the service can then move the live "
        "accuracy that the min_live_accuracy guardrail judges: only for a closed network.",
    )
    feedback_max_body_bytes: int = Field(
        65_536, ge=64, description="Largest feedback body in bytes (413 beyond); read before it is parsed."
    )
    prediction_log_max_bytes: int = Field(
        1_073_741_824,
        ge=65_536,
        description="Most bytes the prediction log may take (default 1 GiB); beyond it the oldest records and "
        "their feedback are removed first. SQLite: the file's used pages. PostgreSQL: enforced as a number of "
        "rows (prediction_log_max_rows).",
    )
    prediction_log_max_rows: int = Field(
        0,
        ge=0,
        description="Most records the log keeps on PostgreSQL, oldest removed first; 0: prediction_log_max_bytes "
        "divided by the average size of the newest records.",
    )

    # -- process -----------------------------------------------------------------------------
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level.")
    graceful_shutdown_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long to let queued and in-flight requests finish."
    )

    @field_validator("prediction_log_images", mode="before")
    @classmethod
    def _images_aliases(cls, value: Any) -> Any:
        """true/false (the setting was a switch once) read as all/none."""
        aliases = {"true": "all", "1": "all", "yes": "all", "false": "none", "0": "none", "no": "none"}
        if isinstance(value, bool):
            return "all" if value else "none"
        return aliases.get(value.strip().lower(), value) if isinstance(value, str) else value

    @field_validator("model_names", "regions", "image_formats", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("image_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        known = (*SERVED_FORMATS, "TIFF")
        formats = [name.upper() for name in value]
        unknown = [name for name in formats if name not in known]
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; choose from {', '.join(known)}")
        return formats

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ServiceSettings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_batch_size ({self.max_batch_size})"
            )
        if self.max_queue_size < self.max_items_per_request:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_items_per_request "
                f"({self.max_items_per_request}), or a full-size request could never be queued"
            )
        return self

    @model_validator(mode="after")
    def _default_region_is_known(self) -> ServiceSettings:
        if self.default_region and self.default_region not in self.regions:
            self.regions.append(self.default_region)
        return self

    def sqlite_state_path(self) -> Path:
        """Where the embedded store lives when no state_url is set."""
        if self.state_path is not None:
            return self.state_path
        if self.rollout is not None:
            return self.rollout.with_name(self.rollout.name + ".state.sqlite")
        return Path("state.sqlite")

    def region_label(self, region: str | None) -> str:
        """The bounded metric label for a client-supplied region."""
        return region if region and region in self.regions else "other"
