"""The gateway's configuration: one YAML file, validated, with environment overrides.

Every environment variable the gateway reads is named in this module. Secrets and URLs can be given
per backend as ``THRIFTY_BACKEND_<NAME>_URL`` and ``THRIFTY_BACKEND_<NAME>_API_KEY`` (``<NAME>`` is the
backend's name upper-cased with ``-`` and ``.`` as ``_``), and Redis as ``THRIFTY_REDIS_URL``; they win over the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thrifty.moe_runtime.config import CacheConfig

ENV_CONFIG = "THRIFTY_CONFIG"
ENV_DATA_DIR = "THRIFTY_DATA_DIR"
ENV_VLLM_PYTHON = "THRIFTY_VLLM_PYTHON"
ENV_REDIS_URL = "THRIFTY_REDIS_URL"
ENV_BACKEND_URL = "THRIFTY_BACKEND_{name}_URL"
ENV_BACKEND_API_KEY = "THRIFTY_BACKEND_{name}_API_KEY"
ENV_PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class ExpertCacheSettings(_Strict):
    """Serve the backend's mixture-of-experts layers through moe_runtime's expert cache (the vLLM plugin):
    ``slots`` experts per layer on the device, the rest in host memory."""

    slots: int = Field(..., ge=1)
    policy: str = "lru"
    gamma: float = 0.9
    pinned_base: str = "lru"

    @model_validator(mode="after")
    def _valid_cache(self) -> ExpertCacheSettings:
        self.cache_config()  # the runtime's own validation, with its messages
        return self

    def cache_config(self) -> CacheConfig:
        return CacheConfig(slots=self.slots, policy=self.policy, gamma=self.gamma, base=self.pinned_base)


class LaunchConfig(_Strict):
    """Makes thrifty start, health-check and stop a local vLLM process for the backend."""

    model_path: str = Field(..., description="model folder or the keyword 'bundled'")
    port: int = Field(..., ge=1, le=65535)
    host: str = "127.0.0.1"
    python: str | None = Field(None, description="interpreter with vLLM installed; default .venv-vllm")
    reasoning_parser: str | None = None
    chat_template: str | None = Field(None, description="a path, or 'thinking' for the bundled thinking template")
    dtype: str = "bfloat16"
    max_model_len: int | None = Field(None, ge=16)
    kv_cache_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE (GiB) on CPU")
    extra_args: list[str] = Field(default_factory=list)
    expert_cache: ExpertCacheSettings | None = None
    startup_timeout_s: float = Field(300.0, gt=0)


class BackendConfig(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN)
    model: str = Field(..., min_length=1, description="the model name the backend serves")
    url: str | None = None
    launch: LaunchConfig | None = None
    api_key: str | None = None
    price: Price = Price()
    reasoning: bool = False
    context_length: int = Field(4096, ge=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_source(self) -> BackendConfig:
        if (self.url is None) == (self.launch is None):
            raise ValueError("give exactly one of 'url' (a running server) or 'launch' (thrifty starts vLLM)")
        return self

    @property
    def base_url(self) -> str:
        if self.url is not None:
            return self.url
        assert self.launch is not None  # guaranteed by _one_source
        return f"http://{self.launch.host}:{self.launch.port}"


class Timeouts(_Strict):
    """Seconds. ``first_token`` bounds the wait for a stream's first event, ``idle`` the wait for each
    later one (a backend that froze mid-stream), ``total`` the whole request."""

    connect: float = Field(5.0, gt=0)
    first_token: float = Field(60.0, gt=0)
    idle: float = Field(30.0, gt=0, description="longest silence between two events of a stream")
    total: float = Field(600.0, gt=0)


class Limits(_Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_sse_event_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest event relayed from a backend's stream (502 beyond)"
    )
    answer_tokens: int = Field(512, ge=1, description="answer allowance added to a thinking budget")
    max_connections_per_backend: int = Field(256, ge=1)
    retries: int = Field(2, ge=0, description="further backends tried for one request")


class HealthConfig(_Strict):
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)


class BreakerConfig(_Strict):
    failure_threshold: int = Field(5, ge=1)
    reset_after_s: float = Field(30.0, gt=0)


class SessionsConfig(_Strict):
    """Multi-turn sessions. Stored in memory, or in Redis when ``redis_url`` is set.

    Only requests that name a session are stored. Each API key holds at most ``max_per_key`` sessions (its
    least recently used go first), so the store is bounded by keys × max_per_key × max_turns turns — about
    15 MB per worker for one key at the defaults (in memory; measured in loadtests/RESULTS.md).
    """

    ttl_s: float = Field(24 * 3600.0, gt=0, description="a session expires this long after its last turn")
    default_budget: int | None = Field(None, ge=0, description="a problem's total token budget B; None = no limit")
    history: int = Field(16, ge=0, description="recent turns handed to the budgeter")
    max_turns: int = Field(64, ge=1, description="turns kept per session (older ones are dropped; totals stay)")
    max_per_key: int = Field(1000, ge=1, description="sessions per API key; a key's own oldest go first")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_sessions" in data:
            raise ValueError(
                "'max_sessions' is gone: sessions are bounded per API key now (sessions.max_per_key, "
                "or max_sessions on a key under auth.keys)"
            )
        return data


class ApiKey(_Strict):
    """A client key, stored as the SHA-256 of the key (``thrifty keys create`` prints both)."""

    name: str = Field(..., pattern=_NAME_PATTERN)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    rpm: int | None = Field(None, ge=1, description="requests per minute; default: auth.rpm")
    tpm: int | None = Field(None, ge=1, description="tokens per minute; default: auth.tpm")
    admin: bool = Field(False, description="may call the /admin endpoints (e.g. reload the router)")
    max_sessions: int | None = Field(None, ge=1, description="sessions it may hold; default: sessions.max_per_key")


class AuthConfig(_Strict):
    keys: list[ApiKey] = Field(default_factory=list)
    rpm: int | None = Field(None, ge=1, description="default requests per minute per key; None = unlimited")
    tpm: int | None = Field(None, ge=1, description="default tokens per minute per key; None = unlimited")

    @model_validator(mode="after")
    def _unique_keys(self) -> AuthConfig:
        for attr in ("name", "sha256"):
            values = [getattr(k, attr) for k in self.keys]
            if len(values) != len(set(values)):
                raise ValueError(f"two API keys share a {attr}")
        return self


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    graceful_shutdown_s: float = Field(30.0, ge=0)


def _policy(name: str) -> dict[str, dict[str, Any]]:
    return {name: {}}


def _single_choice(value: Any, what: str) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        return {value: {}}
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"give one {what} as {{name: {{options}}}}, e.g. {{cheapest: {{}}}}")
    ((name, kwargs),) = value.items()
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"the options of {what} '{name}' must be a mapping")
    return {str(name): dict(kwargs)}


class GatewayConfig(_Strict):
    """Everything ``thrifty serve`` needs; see ``examples/`` for annotated files."""

    server: ServerConfig = ServerConfig()
    backends: list[BackendConfig] = Field(..., min_length=1)
    router: dict[str, dict[str, Any]] = Field(default_factory=lambda: _policy("cheapest"))
    budgeter: dict[str, dict[str, Any]] = Field(default_factory=lambda: _policy("none"))
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    health: HealthConfig = HealthConfig()
    circuit_breaker: BreakerConfig = BreakerConfig()
    sessions: SessionsConfig = SessionsConfig()
    auth: AuthConfig = AuthConfig()
    redis_url: str | None = Field(None, description="sessions and rate limits in Redis; $THRIFTY_REDIS_URL")
    redis_timeout_s: float = Field(
        1.0, gt=0, description="the longest a request waits on Redis; then it is served without session state"
    )
    data_dir: str = "data"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value or None

    @field_validator("router", mode="before")
    @classmethod
    def _router(cls, value: Any) -> dict[str, dict[str, Any]]:
        return _single_choice(value, "router")

    @field_validator("budgeter", mode="before")
    @classmethod
    def _budgeter(cls, value: Any) -> dict[str, dict[str, Any]]:
        return _single_choice(value, "budgeter")

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique; repeated: {', '.join(duplicates)}")
        ports = [b.launch.port for b in self.backends if b.launch is not None]
        if len(ports) != len(set(ports)):
            raise ValueError("launched backends need distinct ports")
        virtual = sorted({b.model for b in self.backends if b.model == "auto" or b.model.startswith("auto:")})
        if virtual:
            raise ValueError(
                f"'auto' and 'auto:<preset>' are the router's virtual models; no backend may serve '{virtual[0]}'"
            )
        # Replicas of one model must describe it alike: the router and budgeter see one description.
        described: dict[str, BackendConfig] = {}
        for b in self.backends:
            first = described.setdefault(b.model, b)
            for field in ("price", "reasoning", "context_length"):
                if getattr(b, field) != getattr(first, field):
                    raise ValueError(
                        f"backends '{first.name}' and '{b.name}' both serve '{b.model}' but give different {field}"
                    )
        return self

    @property
    def router_name(self) -> str:
        return next(iter(self.router))

    @property
    def budgeter_name(self) -> str:
        return next(iter(self.budgeter))


def env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Backend URLs and API keys, and the Redis URL, from the environment win over the file."""
    if environ.get(ENV_REDIS_URL):
        raw["redis_url"] = environ[ENV_REDIS_URL]
    for backend in raw.get("backends") or []:
        if not isinstance(backend, dict) or not isinstance(backend.get("name"), str):
            continue
        key = env_key(backend["name"])
        url = environ.get(ENV_BACKEND_URL.format(name=key))
        if url:
            backend["url"] = url
            backend.pop("launch", None)
        api_key = environ.get(ENV_BACKEND_API_KEY.format(name=key))
        if api_key:
            backend["api_key"] = api_key
    return raw


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_config(raw: Any, *, source: str = "config", environ: Mapping[str, str] | None = None) -> GatewayConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least 'backends'")
    raw = apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not valid:\n{_describe(exc)}") from None


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a YAML file; every mistake is reported with its location."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, source=str(path), environ=environ)


def default_config(data_dir: Path) -> GatewayConfig:
    """The embedded default: one local vLLM process serving the bundled model."""
    return parse_config(
        {
            "data_dir": str(data_dir),
            "backends": [
                {
                    "name": "smollm2-local",
                    "model": "smollm2-135m-instruct",
                    "launch": {"model_path": "bundled", "port": 8100, "max_model_len": 2048},
                    "price": {"input": 0.0, "output": 0.0},
                    "context_length": 2048,
                }
            ],
        },
        source="built-in default config",
    )
