"""API keys and per-key rate limits (in-memory counters), and what must never leak."""

from __future__ import annotations

import logging
import re
import subprocess

import pytest

from tests.helpers import CHAT, THRIFTY_CLI, config_for, fresh_minute, gateway, standins, state_of
from thrifty.server.access import hash_key
from thrifty.server.errors import RateLimited
from thrifty.server.ratelimit import MemoryRateLimiter, Quota
from thrifty.server.standin import StandinState

KEY_A, KEY_B = "thr-alpha-secret-key", "thr-beta-secret-key"


def _config(url: str, **auth: object) -> object:
    keys = [{"name": "team-a", "sha256": hash_key(KEY_A), **auth}, {"name": "team-b", "sha256": hash_key(KEY_B)}]
    return config_for([{"name": "b", "model": "m", "url": url}], auth={"keys": keys})


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_are_required_on_the_api_but_not_on_operations() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url)) as (http, _):
            for headers, code in (({}, "missing_api_key"), (_bearer("wrong"), "invalid_api_key")):
                for method, path in (
                    ("POST", "/v1/chat/completions"),
                    ("GET", "/v1/models"),
                    ("GET", "/v1/sessions/x"),
                ):
                    response = await http.request(method, path, json={"model": "m", **CHAT}, headers=headers)
                    assert response.status_code == 401, (path, response.text)
                    error = response.json()["error"]
                    assert error["code"] == code and error["type"] == "invalid_request_error"
            wrong_scheme = {"Authorization": f"Basic {KEY_A}"}
            assert (await http.get("/v1/models", headers=wrong_scheme)).status_code == 401
            ok = await http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=_bearer(KEY_A))
            assert ok.status_code == 200
            for path in ("/health", "/ready", "/metrics"):
                assert (await http.get(path)).status_code == 200


async def test_requests_per_minute() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url, rpm=3)) as (http, app):
            fresh_minute()
            statuses = [
                (await http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=_bearer(KEY_A)))
                for _ in range(4)
            ]
            assert [r.status_code for r in statuses] == [200, 200, 200, 429]
            refused = statuses[-1]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert "3 requests per minute" in refused.json()["error"]["message"]
            # Another key has its own window; team-b has no limits at all.
            other = await http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=_bearer(KEY_B))
            assert other.status_code == 200
            text = state_of(app).metrics.render()[0].decode()
            assert "thrifty_rate_limited_total 1.0" in text


async def test_tokens_per_minute() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url, tpm=30)) as (http, _):
            fresh_minute()
            # Each answer costs 12 prompt + 6 completion tokens: 18, then 36 >= 30 refuses the third.
            codes = [
                (
                    await http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=_bearer(KEY_A))
                ).status_code
                for _ in range(3)
            ]
            assert codes == [200, 200, 429]


async def test_memory_limiter_windows() -> None:
    limiter = MemoryRateLimiter()
    quota = Quota("k", rpm=2, tpm=None)
    await limiter.admit(quota, now=60.0)
    await limiter.admit(quota, now=61.0)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(quota, now=119.5)
    assert refused.value.retry_after_s == 1
    await limiter.admit(quota, now=120.0)  # a new minute


async def test_sessions_are_private_to_their_key() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url)) as (http, _):
            headers = {**_bearer(KEY_A), "X-Session-ID": "shared-name"}
            await http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=headers)
            assert (await http.get("/v1/sessions/shared-name", headers=_bearer(KEY_A))).status_code == 200
            assert (await http.get("/v1/sessions/shared-name", headers=_bearer(KEY_B))).status_code == 404
            assert (await http.delete("/v1/sessions/shared-name", headers=_bearer(KEY_B))).status_code == 404


async def test_keys_and_prompts_never_reach_logs_or_metrics(caplog: pytest.LogCaptureFixture) -> None:
    prompt = "my-very-private-prompt-7731"
    caplog.set_level(logging.DEBUG)
    with standins(StandinState(model="m"), StandinState(model="m", fail_status=503)) as (b, dead):
        config = config_for(
            [{"name": "b", "model": "m", "url": b.url}, {"name": "d", "model": "m", "url": dead.url}],
            auth={"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "rpm": 2}]},
        )
        async with gateway(config) as (http, app):
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            for _ in range(4):  # successes, a retry past the failing backend, a refusal
                await http.post("/v1/chat/completions", json=body, headers=_bearer(KEY_A))
            await http.post("/v1/chat/completions", json=body, headers=_bearer(KEY_A + "x"))
            metrics = state_of(app).metrics.render()[0].decode()
    for secret in (KEY_A, prompt, hash_key(KEY_A)):
        assert secret not in caplog.text
        assert secret not in metrics


def test_keys_create_prints_a_working_config_line() -> None:
    out = subprocess.run(
        [*THRIFTY_CLI, "keys", "create", "--name", "ci", "--rpm", "10"], capture_output=True, text=True, check=True
    ).stdout
    key = re.search(r"(thr-\S+)", out)
    line = re.search(r"- \{name: ci, sha256: ([0-9a-f]{64}), rpm: 10\}", out)
    assert key and line and hash_key(key.group(1)) == line.group(1)


def test_serve_refuses_a_public_address_without_keys() -> None:
    result = subprocess.run(
        [*THRIFTY_CLI, "serve", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 with no API keys" in result.stderr
    assert "--allow-unauthenticated" in result.stderr
