"""The YAML config: every mistake reported with its place, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.server.app import build_app
from thrifty.server.backends.launcher import VllmProcess
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
    launch: {model_path: bundled, port: 8101, reasoning_parser: deepseek_r1, chat_template: thinking}
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
        ("server: {}", "backends: Field required"),
        ("backends: []", "backends: List should have at least 1 item"),
        ("backends: [{name: a, model: m}]", "backends.0: give exactly one of 'url'"),
        ("backends: [{name: a, model: m, url: 'x:1'}]", "backends.0.url: must be an http"),
        ("backends: [{name: 'a b', model: m, url: 'http://h'}]", "backends.0.name: String should match"),
        ("backends: [{name: a, model: m, url: 'http://h', colour: red}]", "backends.0.colour: Extra inputs"),
        ("backends: [{name: a, model: m, url: 'http://h'}, {name: a, model: n, url: 'http://h'}]", "repeated: a"),
        ("backends: [{name: a, model: auto, url: 'http://h'}]", "no backend may serve 'auto'"),
        (
            "backends: [{name: a, model: m, url: 'http://h'}, {name: b, model: m, url: 'http://i', reasoning: true}]",
            "backends 'a' and 'b' both serve 'm' but give different reasoning",
        ),
        ("backends: [{name: a, model: m, url: 'http://h'}]\nrouter: [1]", "router: give one router"),
        ("backends: [{name: a, model: m, url: 'http://h'}]\ntimeouts: {total: -1}", "timeouts.total"),
        ("backends: [{name: a, model: m, launch: {model_path: x}}]", "backends.0.launch.port: Field required"),
        (
            "backends: [{name: a, model: m, launch: {model_path: x, port: 1, expert_cache: {slots: 2, policy: fifo}}}]",
            "backends.0.launch.expert_cache: unknown expert-cache policy 'fifo'; choose one of: none, lru",
        ),
        (
            "backends: [{name: a, model: m, launch: {model_path: x, port: 1, expert_cache: {slots: 0}}}]",
            "backends.0.launch.expert_cache.slots: Input should be greater than or equal to 1",
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


@pytest.mark.parametrize(
    ("router", "budgeter", "expected"),
    [
        ({"magic": {}}, {"none": {}}, "unknown router 'magic'; choose one of: cheapest, learned, pinned, round_robin"),
        ({"pinned": {}}, {"none": {}}, "router 'pinned': invalid options"),
        ({"pinned": {"model": "other"}}, {"none": {}}, "names model 'other', which no backend serves"),
        ({"cheapest": {}}, {"static": {"budget": -5}}, "integer >= 0"),
        ({"cheapest": {}}, {"static": {"budgett": 5}}, "budgeter 'static': invalid options"),
    ],
)
def test_policy_options_are_checked_before_serving(router: dict, budgeter: dict, expected: str) -> None:
    config = parse_config(
        {"backends": [{"name": "a", "model": "m", "url": "http://h"}], "router": router, "budgeter": budgeter},
        environ={},
    )
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        build_app(config)


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
