"""The settings of one federated router training run, as Flower's flat run config carries them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from thrifty.router.embedding import EMBEDDER_KINDS


@dataclass(frozen=True, slots=True)
class FederatedPlan:
    family: str = "ensemble"  # ensemble | mlp | kmeans
    rounds: int = 20  # MLP: FedAvg rounds; the round with the lowest federated validation loss is kept
    local_epochs: int = 2
    fraction_train: float = 1.0  # share of the clients that train in a round
    min_clients: int = 2  # wait for this many clients; fewer reporting back is an error
    width: int = 512
    dropout: float = 0.1
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    cost_weight: float = 1.0
    clusters: str = "4,8,16,32"  # K-means: candidate numbers of global clusters, chosen on validation
    local_clusters: int = 16  # K-means: each client's own centroids in pass 1
    restarts: int = 5  # K-means: the server's clusterings per K (other seeds); validation picks one
    prior_weight: float = 2.0  # K-means: pseudo-cells shrinking a cell's means toward the model's
    mlp_members: int = 3  # ensemble: MLP federations from different seeds, their predictions averaged
    task_shrinkage: float = 0.1  # ensemble: covariance shrinkage of the task LDA (logs with task labels)
    refit: bool = True  # ensemble: once the shrink is chosen, validation cells join the K-means, task and model sums
    seed: int = 0
    embedder: str = "static"  # static | minilm | minilm-int8
    embedder_dir: str = ""  # a static embedder's folder (on the server, and by default on clients)
    embedding_cache: str = ""  # where clients keep query vectors between runs ("" → the machine's default)
    clients_dir: str = ""  # simulation: client-<partition-id> folders; nodes with a data-dir ignore it
    out: str = ""  # where the server writes the artifact
    copy_embedder: bool = False  # a static embedder's files inside the artifact (else referenced by identity)
    data_sha256: str = ""  # simulation: a digest of the data the clients were drawn from (for the manifest)
    timeout: float = 900.0  # seconds to wait for clients' replies in one step

    def __post_init__(self) -> None:
        if self.family not in ("ensemble", "mlp", "kmeans"):
            raise ValueError(f"family must be ensemble, mlp or kmeans, not '{self.family}'")
        if self.mlp_members < 1 or not 0 <= self.task_shrinkage <= 1:
            raise ValueError("mlp-members must be ≥ 1 and task-shrinkage in [0, 1]")
        if self.embedder not in EMBEDDER_KINDS:
            raise ValueError(f"embedder must be one of {', '.join(EMBEDDER_KINDS)}, not '{self.embedder}'")
        if self.rounds < 1 or self.local_epochs < 1 or self.min_clients < 1 or self.restarts < 1:
            raise ValueError("rounds, local-epochs, min-clients and restarts must be ≥ 1")
        if not 0 < self.fraction_train <= 1:
            raise ValueError("fraction-train must be in (0, 1]")
        if not self.candidate_clusters or min(self.candidate_clusters) < 1:
            raise ValueError("clusters must list numbers ≥ 1, e.g. '4,8,16'")

    @property
    def candidate_clusters(self) -> list[int]:
        try:
            return sorted({int(k) for k in str(self.clusters).split(",") if k.strip()})
        except ValueError:
            raise ValueError(f"clusters must list whole numbers, e.g. '4,8,16', not '{self.clusters}'") from None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], **overrides: Any) -> FederatedPlan:
        """Flower's run config uses dashes (``local-epochs``); unknown keys are an error, not ignored."""
        names = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"unknown router training setting '{key}'")
            kind = type(getattr(cls(), name))
            if kind is bool and isinstance(value, str):  # bool("false") would be True
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"'{key}' must be true or false, not '{value}'")
                values[name] = value.lower() in ("true", "1")
            else:
                values[name] = kind(value)
        return cls(**(values | overrides))

    def settings(self) -> dict[str, Any]:
        """The fields by their Python names (``local_epochs``), as this class and its users take them."""
        return asdict(self)

    def to_run_config(self) -> dict[str, Any]:
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}
