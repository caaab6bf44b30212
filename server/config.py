"""The gateway's configuration: one typed settings object, from a YAML file and the environment.

Every environment variable the gateway reads is named in this module. Any setting can come from the
environment as ``THRIFTY_<FIELD>``, nested fields joined by ``__`` (``THRIFTY_SERVER__PORT=9000``,
``THRIFTY_TIMEOUTS__TOTAL=120``, ``THRIFTY_REDIS_URL``), lists and mappings as JSON
(``THRIFTY_ROUTER='{"cheapest": {}}'``). Secrets and URLs can be given per backend as
``THRIFTY_BACKEND_<NAME>_URL`` and ``THRIFTY_BACKEND_<NAME>_API_KEY`` (``<NAME>`` is the backend's name
upper-cased with ``-`` and ``.`` as ``_``). The environment wins over the file.

A file is checked in one pass: every mistake, the router's and budgeter's options included, is reported
at once, each with its place.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from thrifty.budgeter.registry import BUDGETERS
from thrifty.moe_runtime.config import CacheConfig
from thrifty.router.registry import ROUTERS
from thrifty.server.kit.vllm import ENV_VLLM_PYTHON  # noqa: F401 - read by the kit, listed with the rest here
from thrifty.server.stage_options import option_problems, plain_message

ENV_PREFIX = "THRIFTY_"  # THRIFTY_<FIELD>, nested with __: every setting of GatewayConfig
ENV_NESTED = "__"
ENV_CONFIG = "THRIFTY_CONFIG"
ENV_DATA_DIR = "THRIFTY_DATA_DIR"  # also the data_dir setting
ENV_REDIS_URL = "THRIFTY_REDIS_URL"  # also the redis_url setting
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
    predictor: str | None = Field(
        None, description="policy predicted: a `thrifty train melinoe` artifact folder (or its predictor.safetensors)"
    )
    pin_share: float | None = Field(
        None, description="policy predicted: the share of its C experts to pin (default: the one the job chose)"
    )

    @model_validator(mode="after")
    def _valid_cache(self) -> ExpertCacheSettings:
        self.cache_config()  # the runtime's own validation, with its messages (the file is checked at launch)
        return self

    def cache_config(self) -> CacheConfig:
        predictor = str(Path(self.predictor).resolve()) if self.predictor is not None else None
        return CacheConfig(
            slots=self.slots, policy=self.policy, gamma=self.gamma, base=self.pinned_base, predictor=predictor,
            pin_share=self.pin_share,
        )  # fmt: skip


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
    unhealthy_after: int = Field(
        2, ge=1, description="failed checks in a row that take a backend that was up out (one slow answer is not)"
    )


class BreakerConfig(_Strict):
    failure_threshold: int = Field(5, ge=1)
    reset_after_s: float = Field(30.0, gt=0)


class SessionsConfig(_Strict):
    """Multi-turn sessions. Stored in memory, or in Redis when ``redis_url`` is set.

    Only requests that name a session are stored. Each API key holds at most ``max_per_key`` sessions (its
    least recently used go first), so the store is bounded by keys × max_per_key × max_turns turns — 12–19
    MB per worker for one key at the defaults (in memory; measured in loadtests/RESULTS.md).
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
    # An idle client connection is kept this long. Longer than clients keep theirs (httpx and so the
    # openai SDK: 5 s), so a client never sends on a connection the gateway is closing at that moment.
    keep_alive_s: int = Field(75, ge=1)


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


class GatewayConfig(BaseSettings):
    """Everything ``thrifty serve`` needs; see ``examples/`` for annotated files. Built by
    :func:`parse_config` (file values, then the environment over them), never from ``os.environ`` alone."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, case_sensitive=False
    )

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
    """Per-backend URLs and API keys from the environment win over the file."""
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


class _Environment(EnvSettingsSource):
    """pydantic-settings' reading of THRIFTY_* variables, from a given mapping (tests pass their own)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(GatewayConfig)

    def _load_env_vars(self) -> Mapping[str, str | None]:  # the source's hook for where variables come from
        return {key.lower(): value for key, value in self._environ.items()}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The field names the config section at ``loc`` accepts (for 'did you mean')."""
    model: type[BaseModel] = GatewayConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: the list's model
        field = model.model_fields.get(part)
        if field is None:
            return []
        nested = [
            c
            for c in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _env_variable(loc: tuple[int | str, ...], from_env: Mapping[str, Any]) -> str | None:
    """The environment variable that set the value at ``loc``, if one did."""
    names: list[str] = []
    value: Any = from_env
    for part in loc:
        if not isinstance(value, Mapping) or part not in value:
            break
        names.append(str(part))
        value = value[part]
    return ENV_PREFIX + ENV_NESTED.join(names).upper() if names else None


def _plain(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        *parent, name = error["loc"]
        known = _fields_at(tuple(parent))
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; known: {', '.join(known)}" if known else "")
        return "unknown field" + hint
    return plain_message(error)


def _place(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _stage_problems(raw: Mapping[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    """The router's and budgeter's options, checked with the file (not only when the gateway starts)."""
    problems = []
    for section, registry in (("router", ROUTERS), ("budgeter", BUDGETERS)):
        if section not in raw:
            continue
        try:
            ((name, options),) = _single_choice(raw[section], section).items()
        except ValueError:
            continue  # its shape is wrong: the schema has said so
        found = option_problems(section, registry, name, options)
        problems += found
        if section == "router" and name == "pinned" and not found:
            served = {b.get("model") for b in raw.get("backends") or [] if isinstance(b, Mapping)}
            if options["model"] not in served:
                problems.append(
                    (("router", "pinned", "model"), f"names model '{options['model']}', which no backend serves")
                )
    return problems


def parse_config(raw: Any, *, source: str = "config", environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The settings from a parsed file (``raw``) and the environment; every mistake in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least 'backends'")
    environ = os.environ if environ is None else environ
    from_env = _Environment(environ)()
    raw = _merge(apply_env_overrides(raw, environ), from_env)
    problems: list[tuple[tuple[int | str, ...], str]] = []
    config = None
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [(tuple(e["loc"]), _plain(e)) for e in exc.errors(include_url=False)]
    problems += _stage_problems(raw)
    if problems or config is None:
        lines = []
        for loc, message in problems:
            variable = _env_variable(loc, from_env)
            lines.append(f"  {_place(loc)}: {message}" + (f" (from {variable})" if variable else ""))
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(lines))
    return config


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
