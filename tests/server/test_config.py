"""The YAML config: every mistake reported with its place, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.server.app import build_app
from thrifty.server.backends.launcher import LaunchError, VllmProcess
from thrifty.server.config import ConfigError, default_config, load_config, parse_config

GOOD = """
server: {port: 9000, workers: 2}
backends:
  - name: small
    model: smollm2
    url: http://127.0.0.1:8100/
    price: {input: 0.1, output: 0.3}
  - name: local-vllm
    model: thinker
    reasoning: true
    context_length: 2048
    launch: {model_path: bundled, port: 8101, reasoning_parser: thrifty_r1, chat_template: thinking}
router: {pinned: {model: thinker}}
budgeter: {static: {budget: 128}}
timeouts: {connect: 1, first_token: 10, total: 60}
"""


def test_a_full_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    config = load_config(path, environ={})
    assert config.server.workers == 2
    assert config.backends[0].base_url == "http://127.0.0.1:8100"
    assert config.backends[1].base_url == "http://127.0.0.1:8101"
    assert config.router == {"pinned": {"model": "thinker"}}
    assert config.budgeter_name == "static"
    build_app(config)


def test_environment_overrides_urls_and_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    environ = {
        "THRIFTY_BACKEND_SMALL_URL": "https://models.example:8443",
        "THRIFTY_BACKEND_SMALL_API_KEY": "sk-secret",
        "THRIFTY_BACKEND_LOCAL_VLLM_URL": "http://10.0.0.5:8000",
    }
    config = load_config(path, environ=environ)
    assert config.backends[0].base_url == "https://models.example:8443"
    assert config.backends[0].api_key == "sk-secret"
    assert config.backends[1].launch is None and config.backends[1].base_url == "http://10.0.0.5:8000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backends: [", "not valid YAML"),
        ("- a\n- b", "top level must be a mapping"),
        ("server: {}", "backends: required"),
        ("backends: []", "backends: List should have at least 1 item"),
        ("backends: [{name: a, model: m}]", "backends.0: give exactly one of 'url'"),
        ("backends: [{name: a, model: m, url: 'x:1'}]", "backends.0.url: must be an http"),
        ("backends: [{name: 'a b', model: m, url: 'http://h'}]", "backends.0.name: String should match"),
        ("backends: [{name: a, model: m, url: 'http://h', colour: red}]", "backends.0.colour: unknown field; known:"),
        ("backends: [{name: a, model: m, url: 'http://h'}, {name: a, model: n, url: 'http://h'}]", "repeated: a"),
        ("backends: [{name: a, model: auto, url: 'http://h'}]", "no backend may serve 'auto'"),
        (
            "backends: [{name: a, model: m, url: 'http://h'}, {name: b, model: m, url: 'http://i', reasoning: true}]",
            "backends 'a' and 'b' both serve 'm' but give different reasoning",
        ),
        ("backends: [{name: a, model: m, url: 'http://h'}]\nrouter: [1]", "router: give one router"),
        ("backends: [{name: a, model: m, url: 'http://h'}]\ntimeouts: {total: -1}", "timeouts.total"),
        ("backends: [{name: a, model: m, launch: {model_path: x}}]", "backends.0.launch.port: required"),
        (
            "backends: [{name: a, model: m, url: 'http://h'}]\nsessions: {max_sessions: 9}",
            "sessions: 'max_sessions' is gone",
        ),
        (
            "backends: [{name: a, model: m, launch: {model_path: x, port: 1, expert_cache: {slots: 2, policy: fifo}}}]",
            "backends.0.launch.expert_cache: unknown expert-cache policy 'fifo'; choose one of: none, lru",
        ),
        (
            "backends: [{name: a, model: m, launch: {model_path: x, port: 1, expert_cache: {slots: 0}}}]",
            "backends.0.launch.expert_cache.slots: must be ≥ 1",
        ),
    ],
)
def test_mistakes_are_reported_with_their_place(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_every_mistake_of_a_file_is_reported_at_once_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server: {port: nine}\n"
        "backends: [{name: a, modle: m, url: 'http://h'}]\n"
        "timeouts: {total: -1}\n"
        "router: {learned: {artifact: x, lambda: -1, lamda: 3}}\n"
        "budgeter: {static: {budgett: 512}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    for line in (
        "server.port: must be a whole number",
        "backends.0.modle: unknown field; did you mean 'model'?",
        "backends.0.model: required",
        "timeouts.total: must be > 0",
        "router.learned.lambda: must be ≥ 0",
        "router.learned.lamda: unknown option; the learned router takes: artifact, embedder_dir, lambda, presets",
        "budgeter.static.budget: required",
        "budgeter.static.budgett: unknown option; the static budgeter takes: budget",
    ):
        assert f"  {line}" in message.splitlines(), message
    assert "__init__" not in message and "unexpected keyword" not in message and "Input should" not in message


@pytest.mark.parametrize(
    ("router", "budgeter", "expected"),
    [
        (
            {"magic": {}},
            {"none": {}},
            "router: unknown router 'magic'; choose one of: cheapest, learned, pinned, round_robin",
        ),
        ({"pinned": {}}, {"none": {}}, "router.pinned.model: required"),
        (
            {"pinned": {"model": "other"}},
            {"none": {}},
            "router.pinned.model: names model 'other', which no backend serves",
        ),
        ({"cheapest": {}}, {"static": {"budget": -5}}, "budgeter.static.budget: must be ≥ 0"),
        (
            {"cheapest": {"x": 1}},
            {"none": {}},
            "router.cheapest.x: unknown option; the cheapest router takes: no options",
        ),
        ({"cheapest": {}}, {"none": {"budget": 1}}, "budgeter.none.budget: unknown option"),
    ],
)
def test_policy_options_are_checked_with_the_file(router: dict, budgeter: dict, expected: str) -> None:
    raw = {"backends": [{"name": "a", "model": "m", "url": "http://h"}], "router": router, "budgeter": budgeter}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert expected in str(info.value)


def test_an_artifact_that_cannot_be_read_stops_the_start_with_its_place(tmp_path: Path) -> None:
    raw = {
        "backends": [{"name": "a", "model": "m", "url": "http://h"}],
        "router": {"learned": {"artifact": str(tmp_path)}},
    }
    with pytest.raises(ConfigError, match=r"router\.learned: router artifact .*no manifest\.json"):
        build_app(parse_config(raw, environ={}))


def test_every_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    environ = {
        "THRIFTY_SERVER__PORT": "9100",
        "THRIFTY_TIMEOUTS__TOTAL": "33",
        "THRIFTY_SESSIONS__MAX_PER_KEY": "7",
        "THRIFTY_REDIS_URL": "redis://cache:6379/1",
        "THRIFTY_REDIS_TIMEOUT_S": "0.25",
        "THRIFTY_BUDGETER": '{"static": {"budget": 64}}',
        "THRIFTY_CONFIG": "/elsewhere.yaml",  # names the file: not a setting, and no mistake
        "THRIFTY_MOE_CACHE": "1",  # the vLLM plugin's: not the gateway's
    }
    config = load_config(path, environ=environ)
    assert config.server.port == 9100 and config.server.workers == 2  # merged into the file's section
    assert config.timeouts.total == 33 and config.timeouts.connect == 1
    assert config.sessions.max_per_key == 7
    assert config.redis_url == "redis://cache:6379/1" and config.redis_timeout_s == 0.25
    assert config.budgeter == {"static": {"budget": 64}}
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"THRIFTY_SERVER__PROT": "1", "THRIFTY_TIMEOUTS__IDLE": "-3"})
    assert "server.prot: unknown field; did you mean 'port'? (from THRIFTY_SERVER__PROT)" in str(info.value)
    assert "timeouts.idle: must be > 0 (from THRIFTY_TIMEOUTS__IDLE)" in str(info.value)


def test_default_config_serves_the_bundled_model(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    (backend,) = config.backends
    assert backend.launch is not None and backend.launch.model_path == "bundled"
    assert config.router_name == "cheapest" and config.budgeter_name == "none"


def test_an_expert_cache_backend_launches_with_the_plugin_configured(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "backends: [{name: moe, model: m, launch: {model_path: x, port: 8123,"
        " expert_cache: {slots: 2, policy: pinned, gamma: 0.8, pinned_base: decay}}}]"
    )
    backend = load_config(path, environ={}).backends[0]
    process = VllmProcess(backend, tmp_path)
    assert "--enforce-eager" in process.command()
    assert backend.launch is not None and backend.launch.expert_cache is not None
    env = backend.launch.expert_cache.cache_config().to_env()
    assert env == {
        "THRIFTY_MOE_CACHE": "1",
        "THRIFTY_MOE_SLOTS": "2",
        "THRIFTY_MOE_POLICY": "pinned",
        "THRIFTY_MOE_GAMMA": "0.8",
        "THRIFTY_MOE_PINNED_BASE": "decay",
    }


def test_a_predicted_expert_cache_passes_its_predictor_and_a_missing_one_stops_the_launch(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    artifact = tmp_path / "melinoe"
    path.write_text(
        "backends: [{name: moe, model: m, launch: {model_path: x, port: 8123,"
        f" expert_cache: {{slots: 16, policy: predicted, predictor: {artifact}}}}}}}]"
    )
    backend = load_config(path, environ={}).backends[0]
    assert backend.launch is not None and backend.launch.expert_cache is not None
    env = backend.launch.expert_cache.cache_config().to_env()
    assert env["THRIFTY_MOE_POLICY"] == "predicted" and env["THRIFTY_MOE_PREDICTOR"] == str(artifact.resolve())
    with pytest.raises(LaunchError, match="no expert predictor at .*melinoe"):
        VllmProcess(backend, tmp_path).start()  # refused before any process starts
    path.write_text(
        "backends: [{name: moe, model: m, launch: {model_path: x, port: 8123,"
        f" expert_cache: {{slots: 16, policy: predicted, predictor: {artifact}, pin_share: 0.25}}}}}}]"
    )
    cache = load_config(path, environ={}).backends[0].launch.expert_cache  # type: ignore[union-attr]
    assert cache is not None and cache.cache_config().to_env()["THRIFTY_MOE_PIN_SHARE"] == "0.25"
    for policy, predictor, message in (
        ("predicted", "", "the predicted policy needs a predictor"),
        ("lru", f", predictor: {artifact}", "only it takes one"),
        ("predicted", f", predictor: {artifact}, pin_share: 2", r"pin_share must be in \[0, 1\]"),
        ("lru", ", pin_share: 0.5", "pin_share is the predicted policy's setting"),
    ):
        path.write_text(
            "backends: [{name: moe, model: m, launch: {model_path: x, port: 8123,"
            f" expert_cache: {{slots: 16, policy: {policy}{predictor}}}}}}}]"
        )
        with pytest.raises(ConfigError, match=message):
            load_config(path, environ={})
