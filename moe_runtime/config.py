"""The expert cache's settings, and the environment variables that carry them into a vLLM process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from thrifty.moe_runtime.eviction import POLICY_NAMES

# Every environment variable the runtime reads (the vLLM plugin's configuration).
ENV_ENABLE = "THRIFTY_MOE_CACHE"  # "1" turns the plugin on; anything else leaves vLLM untouched
ENV_SLOTS = "THRIFTY_MOE_SLOTS"  # C, slots per layer
ENV_POLICY = "THRIFTY_MOE_POLICY"
ENV_GAMMA = "THRIFTY_MOE_GAMMA"
ENV_BASE = "THRIFTY_MOE_PINNED_BASE"  # the policy for unpinned experts under `pinned` and `predicted`
ENV_PREDICTOR = "THRIFTY_MOE_PREDICTOR"  # the MELINOE artifact (or predictor file) the `predicted` policy reads
ENV_PIN_SHARE = "THRIFTY_MOE_PIN_SHARE"  # `predicted`: the share of its C experts pinned (default: the predictor's)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """C expert slots per layer and the policy that decides what stays in them.

    ``slots`` larger than a layer's expert count is clamped to it (everything stays resident).
    ``gamma`` is the decay policy's γ; ``base`` the policy ``pinned`` and ``predicted`` apply to other
    experts; ``predictor`` the MELINOE artifact folder (or its ``predictor.safetensors``) whose per-layer
    prediction ``predicted`` fetches at each prefill, pinning the best ``pin_share`` · C of it (None: the
    share the predictor itself records, which the MELINOE job chose on held-out routing).
    """

    slots: int
    policy: str = "lru"
    gamma: float = 0.9
    base: str = "lru"
    predictor: str | None = None
    pin_share: float | None = None

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"expert cache: slots must be ≥ 1, got {self.slots}")
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"unknown expert-cache policy '{self.policy}'; choose one of: {', '.join(POLICY_NAMES)}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"expert cache: gamma must be in (0, 1), got {self.gamma}")
        if self.base in ("none", "pinned", "predicted") or self.base not in POLICY_NAMES:
            raise ValueError(
                f"expert cache: the pinned policy's base must be lru, lfu, lfru or decay, got '{self.base}'"
            )
        if (self.policy == "predicted") != (self.predictor is not None):
            raise ValueError("expert cache: the predicted policy needs a predictor, and only it takes one")
        if self.pin_share is not None:
            if self.policy != "predicted":
                raise ValueError("expert cache: pin_share is the predicted policy's setting")
            if not 0.0 <= self.pin_share <= 1.0:
                raise ValueError(f"expert cache: pin_share must be in [0, 1], got {self.pin_share}")

    @property
    def keeps_nothing(self) -> bool:
        return self.policy == "none"

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_ENABLE: "1",
            ENV_SLOTS: str(self.slots),
            ENV_POLICY: self.policy,
            ENV_GAMMA: repr(self.gamma),
            ENV_BASE: self.base,
        }
        if self.predictor is not None:
            env[ENV_PREDICTOR] = self.predictor
        if self.pin_share is not None:
            env[ENV_PIN_SHARE] = repr(self.pin_share)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CacheConfig | None:
        """The configuration the environment asks for, or None when the cache is not enabled."""
        if environ.get(ENV_ENABLE) != "1":
            return None
        raw = environ.get(ENV_SLOTS)
        if raw is None:
            raise ValueError(f"{ENV_ENABLE}=1 needs {ENV_SLOTS} (expert slots per layer)")
        try:
            slots = int(raw)
            gamma = float(environ.get(ENV_GAMMA, "0.9"))
            share = environ.get(ENV_PIN_SHARE)
            pin_share = float(share) if share else None
        except ValueError:
            raise ValueError(f"{ENV_SLOTS} must be an integer, {ENV_GAMMA} and {ENV_PIN_SHARE} numbers") from None
        return cls(
            slots=slots,
            policy=environ.get(ENV_POLICY, "lru"),
            gamma=gamma,
            base=environ.get(ENV_BASE, "lru"),
            predictor=environ.get(ENV_PREDICTOR) or None,
            pin_share=pin_share,
        )
