"""Service settings, read from DIGITGEN_* environment variables.

    DIGITGEN_WEIGHTS        weights folder (default: weights/ next to the package)
    DIGITGEN_HOST           bind address for `serve` (default 127.0.0.1)
    DIGITGEN_PORT           port for `serve` (default 8000)
    DIGITGEN_MAX_BATCH      trajectories per UNet forward (default 64)
    DIGITGEN_MAX_QUEUE      images that may wait for a batch slot (default 256)
    DIGITGEN_DEADLINE_S     per-request deadline in seconds, queueing included (default 120)
    DIGITGEN_GRACEFUL_S     seconds `serve` lets open requests finish on shutdown (default 10)
    DIGITGEN_THREADS        engine threads (default 0: the CPU count, at most 8)
    DIGITGEN_MAX_REQUEST_ROWS UNet rows one request may cost (images x steps x rows a step); more is a 422
                            (default 8192: one base digit is 40)
    DIGITGEN_MAX_BACKLOG_ROWS UNet rows admitted and not yet run, past which new requests get 503 (default 32768)
    DIGITGEN_MAX_GIF_PIXELS frames x width x height one GIF may have; more is a 422 (default 50 x 512 x 512)
    DIGITGEN_MAX_BODY_BYTES request bodies larger than this are a 413 (default 65536)
    DIGITGEN_BODY_TIMEOUT_S seconds a request body may take to arrive, else 408 (default 10)
    DIGITGEN_HEADER_TIMEOUT_S seconds a request line + headers may take to arrive, else 408 and the
                            connection closes (default 10; `serve` only: it is uvicorn's protocol)
    DIGITGEN_MAX_CONNECTIONS concurrent connections `serve` accepts before answering 503 (default 200)
    DIGITGEN_API_KEYS       comma-separated API keys; when set (or DIGITGEN_API_KEYS_FILE, one key a line)
                            every endpoint but the probes, metrics and page needs Authorization: Bearer <key>
    DIGITGEN_RATE_LIMIT     requests a second per client (API key, else address); 0 = off (default)
    DIGITGEN_RATE_BURST     requests a client may send at once before the rate applies (default 20)
    DIGITGEN_CORS_ORIGINS   comma-separated origins allowed to call the API from a browser (default: none)
    DIGITGEN_DEFAULT_MODEL  base or fast: the model a request without `model` gets (default: fast when
                            WEIGHTS/fast is there, else base)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from engine import paths



class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    weights: Path = paths.WEIGHTS
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    max_queue: int = 256
    deadline_s: float = 120.0
    graceful_s: float = 10.0
    threads: int = 0
    default_model: str = ""
    max_body_bytes: int = 65536
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    cors_origins: str = ""
    max_connections: int = 200
    max_request_rows: int = 8192
    max_backlog_rows: int = 32768
    max_gif_pixels: int = 50 * 512 * 512
    api_keys: str = ""
    api_keys_file: str = ""
    rate_limit: float = 0.0
    rate_burst: int = 20

    def __post_init__(self):
        object.__setattr__(self, "weights", Path(self.weights))
        checks = {"port": 0 <= self.port <= 65535, "max_batch": self.max_batch >= 1,
                  "max_queue": self.max_queue >= 0, "deadline_s": self.deadline_s > 0,
                  "graceful_s": self.graceful_s >= 0, "threads": self.threads >= 0,
                  "default_model": self.default_model in ("", "base", "fast"),
                  "max_body_bytes": self.max_body_bytes >= 0, "body_timeout_s": self.body_timeout_s > 0,
                  "header_timeout_s": self.header_timeout_s > 0,
                  "max_connections": self.max_connections >= 1, "max_request_rows": self.max_request_rows >= 1,
                  "max_backlog_rows": self.max_backlog_rows >= self.max_request_rows,
                  "max_gif_pixels": self.max_gif_pixels >= 28 * 28 * 2, "rate_limit": self.rate_limit >= 0,
                  "rate_burst": self.rate_burst >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r} is out of range")

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        """Environment first, then explicit keyword overrides (None = not given)."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in dataclasses.fields(cls):
            var = f"DIGITGEN_{'GRACEFUL_S' if f.name == 'graceful_s' else f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                values[f.name] = Path(raw) if kind is type(paths.WEIGHTS) else kind(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{e} (see DIGITGEN_* environment variables)") from None

    def api_key_list(self) -> tuple[str, ...]:
        """The keys from DIGITGEN_API_KEYS and DIGITGEN_API_KEYS_FILE (read now)."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file:
            try:
                keys += [line.strip() for line in Path(self.api_keys_file).read_text().splitlines()
                         if line.strip() and not line.startswith("#")]
            except OSError as e:
                raise ConfigError(f"DIGITGEN_API_KEYS_FILE={self.api_keys_file!r} cannot be read: {e}") from None
        return tuple(keys)

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.cors_origins.split(",") if o.strip())

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
