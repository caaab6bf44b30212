"""The solvers' architectures and training plans, read from ``solvers.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from transformers import PretrainedConfig

SPEC_FILE = Path(__file__).with_name("solvers.yaml")
HEAD_DIM = 64
MAX_POSITIONS = 4096


@dataclass(frozen=True, slots=True)
class SolverSpec:
    name: str
    architecture: str  # "qwen3" (dense) or "qwen3_moe"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int = 0
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    router_aux_loss: float = 0.0
    price: dict[str, float] = field(default_factory=lambda: {"input": 0.0, "output": 0.0})  # USD per 1M tokens

    def __post_init__(self) -> None:
        if self.architecture not in ("qwen3", "qwen3_moe"):
            raise ValueError(f"solver {self.name}: architecture must be qwen3 or qwen3_moe")
        if self.hidden != self.heads * HEAD_DIM:
            raise ValueError(f"solver {self.name}: hidden must be heads × {HEAD_DIM} (vLLM CPU needs head_dim 64)")
        if self.heads % self.kv_heads:
            raise ValueError(f"solver {self.name}: heads must be a multiple of kv_heads")
        if self.architecture == "qwen3_moe" and not (self.experts >= 2 and 0 < self.experts_per_token <= self.experts):
            raise ValueError(f"solver {self.name}: a mixture of experts needs experts ≥ 2 and 1 ≤ top-k ≤ experts")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price["input"] + completion_tokens * self.price["output"]) / 1e6

    @property
    def is_moe(self) -> bool:
        return self.architecture == "qwen3_moe"

    def model_config(self, vocab_size: int, eos_token_id: int, pad_token_id: int) -> PretrainedConfig:
        common: dict[str, Any] = {
            "vocab_size": vocab_size,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": HEAD_DIM,
            "max_position_embeddings": MAX_POSITIONS,
            "tie_word_embeddings": True,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "bos_token_id": None,
        }
        if self.is_moe:
            from transformers import Qwen3MoeConfig

            return Qwen3MoeConfig(
                **common,
                intermediate_size=self.expert_intermediate,
                moe_intermediate_size=self.expert_intermediate,
                num_experts=self.experts,
                num_experts_per_tok=self.experts_per_token,
                norm_topk_prob=True,
                decoder_sparse_step=1,
                mlp_only_layers=[],
                output_router_logits=True,
                router_aux_loss_coef=self.router_aux_loss,
            )
        from transformers import Qwen3Config

        return Qwen3Config(**common, intermediate_size=self.intermediate)


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """How a solver is trained. ``steps`` alone decides how much: a build computes the same on any machine.

    ``max_minutes`` is only a safety net against a machine far slower than expected (or a hung job): past
    it, training checkpoints and fails with a message, and running the build again continues from there.
    """

    steps: int
    max_minutes: float
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    truncated_fraction: float
    train_problems: int | None
    checkpoint_every_s: float
    solver_steps: dict[str, int] = field(default_factory=dict)  # a solver's own schedule length, if not `steps`
    boundary_fraction: float = 0.0  # of the cut examples, those cut within a few tokens of a working's end
    end_fraction: float = 0.0  # of the boundary cuts, those exactly at a working's end (the rest land around it)
    # Solvers whose forward and backward passes run under bfloat16 autocast (weights and optimizer stay
    # float32): ~1.5× faster on CPUs with AVX512-BF16 or AMX, slower on CPUs without.
    bf16: tuple[str, ...] = ()
    autocast: bool = False  # this plan's solver trains under bfloat16 autocast (set by for_solver)
    # Solvers whose training step runs through torch.compile (Inductor's C++ kernels fuse the casts and
    # element-wise work around the matmuls; dense-m's step under autocast is ~1.6× faster on this CPU).
    # Without a C++ compiler the step runs eagerly, with a warning: the same training, only slower.
    torch_compile: tuple[str, ...] = ()
    compiled: bool = False  # this plan's solver trains through torch.compile (set by for_solver)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_minutes <= 0:
            raise ValueError("a training plan needs steps ≥ 1, batch_size ≥ 1 and max_minutes > 0")
        if not 0 <= self.truncated_fraction < 1:
            raise ValueError("truncated_fraction must be in [0, 1)")
        if not 0 <= self.boundary_fraction <= 1 or not 0 <= self.end_fraction <= 1:
            raise ValueError("boundary_fraction and end_fraction must be in [0, 1]")
        if any(steps < 1 for steps in self.solver_steps.values()):
            raise ValueError("solver_steps must be ≥ 1")

    def for_solver(self, name: str) -> TrainingPlan:
        """The plan one solver trains with: ``steps`` replaced by its entry in ``solver_steps``, if any."""
        return replace(
            self,
            steps=self.solver_steps.get(name, self.steps),
            solver_steps={},
            bf16=(),
            autocast=name in self.bf16,
            torch_compile=(),
            compiled=name in self.torch_compile,
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class EnvironmentPlan:
    """The budget environment a build measures (``environment`` in ``solvers.yaml``)."""

    ladder: tuple[int, ...]
    solvers: tuple[str, ...]
    test_problems: int
    train_problems: int
    shortcut_turns: int
    live_problems: int
    live_budgets: tuple[int | None, ...]
    unlimited_thinking: int  # the most a turn may think "unlimited" (a solver that never stops is cut there)

    def __post_init__(self) -> None:
        if not self.ladder or any(b < 1 for b in self.ladder) or list(self.ladder) != sorted(set(self.ladder)):
            raise ValueError("the ladder must be budgets ≥ 1 in increasing order")
        if min(self.test_problems, self.train_problems, self.live_problems) < 1 or self.shortcut_turns < 0:
            raise ValueError("the environment needs ≥ 1 test, train and live problems, and shortcut_turns ≥ 0")
        if any(b is not None and b < 0 for b in self.live_budgets) or len(self.live_budgets) != 3:
            raise ValueError("live_budgets must be three static budgets (≥ 0, or null: unlimited)")
        if self.unlimited_thinking <= self.ladder[-1]:
            raise ValueError("unlimited_thinking must be above the ladder's top rung")

    @property
    def budgets(self) -> tuple[int | None, ...]:
        """Every budget a table holds: 0, the ladder, unlimited."""
        return (0, *self.ladder, None)

    def to_json(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True, slots=True)
class WorldSpec:
    solvers: dict[str, SolverSpec]
    training: dict[str, TrainingPlan]
    environment: dict[str, EnvironmentPlan]


def load_specs(path: Path = SPEC_FILE) -> WorldSpec:
    data = yaml.safe_load(path.read_text())
    solvers = {name: SolverSpec(name=name, **values) for name, values in data["solvers"].items()}
    training = {
        name: TrainingPlan(**(values | {key: tuple(values.get(key, ())) for key in ("bf16", "torch_compile")}))
        for name, values in data["training"].items()
    }
    for mode, plan in training.items():
        unknown = sorted((set(plan.solver_steps) | set(plan.bf16) | set(plan.torch_compile)) - set(solvers))
        if unknown:
            raise ValueError(f"training.{mode} names unknown solver(s): {', '.join(unknown)}")
    environment = {
        mode: EnvironmentPlan(**(values | {k: tuple(values[k]) for k in ("ladder", "solvers", "live_budgets")}))
        for mode, values in data["environment"].items()
    }
    for mode, measured in environment.items():
        unknown = sorted(set(measured.solvers) - set(solvers))
        if unknown:
            raise ValueError(f"environment.{mode}.solvers names unknown solver(s): {', '.join(unknown)}")
    return WorldSpec(solvers=solvers, training=training, environment=environment)
