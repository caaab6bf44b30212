"""``thrifty train melinoe``: fine-tune an MoE model so that each sequence reuses few experts, fit the
predictor of those experts, and write both as one artifact — a resumable job on the kit's runner.

Stages (each recorded in ``OUT/state.json`` when done; a rerun skips it, an interrupted ``tune``
continues from its last checkpoint, other settings are refused):

- ``baseline``: the base model's validation NLL, and its routing recorded while it greedily decodes
  the fit and validation prompts (``traces/base.{fit,validation}.trace.safetensors``); the cache
  policies replayed on it at C;
- ``tune``: the fine-tune (:mod:`~thrifty.moe_runtime.melinoe.tuning`), checkpointing the trainable
  tensors and AdamW's state as safetensors every ``checkpoint_every_s``; the merged model goes to
  ``OUT/tuned`` (a plain Hugging Face folder);
- ``predictor``: the tuned model's routing on the same prompts, the activation predictor fitted on
  the fit prompts and judged on the validation ones, where the share of its C experts to pin is chosen
  too (``choose_pin_share``); a predictor for the base model as well, so the ``predicted`` policy can be
  compared on both;
- ``artifact``: ``OUT/artifact/`` = ``model/`` (what vLLM serves with the expert-cache plugin),
  ``predictor.safetensors`` (what the ``predicted`` policy reads), ``traces/`` and ``manifest.json``
  (kind ``thrifty.melinoe``: the base model's hash, the data's, C, γ, the λs, every metric).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.melinoe.data import digest as data_digest
from thrifty.moe_runtime.melinoe.predictor import FILE as PREDICTOR_FILE
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor
from thrifty.moe_runtime.melinoe.tuning import Tuner, TuningSettings, decoder_layer_ids, moe_blocks
from thrifty.moe_runtime.simulate import choose_pin_share, distinct_per_layer, replay
from thrifty.moe_runtime.traces import RoutingTrace
from thrifty.server.kit.artifacts import ArtifactWriter, swap_in
from thrifty.server.kit.checkpoints import load_optimizer, save_optimizer
from thrifty.server.kit.jobs import Job, JobError, StageContext

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from thrifty.moe_runtime.melinoe.data import TuningData

logger = logging.getLogger(__name__)

KIND = "thrifty.melinoe"
VERSION = 1
JOB_KIND = "melinoe fine-tune"
MODEL_DIR = "model"
TRACES = "traces"
REPLAYED = ("lru", "lfru", "decay", "pinned")  # policies every trace is replayed under (pinned: an oracle)


class StopRequested(RuntimeError):
    """The fine-tune stopped on request after a checkpoint (tests: an interrupted job)."""


@dataclass(frozen=True, slots=True)
class MelinoeJobOptions:
    model: Path  # the base model: a Hugging Face folder
    data: Path  # a world build folder or a JSONL file (moe_runtime.melinoe.data)
    out: Path
    tuning: TuningSettings
    fit_prompts: int = 200  # prompts whose decoding the predictor is fitted on
    validation_prompts: int = 50  # held-out prompts it is judged on
    max_new_tokens: int = 256  # how far each recorded decoding goes
    max_tokens: int = 2048  # JSONL examples are cut here
    checkpoint_every_s: float = 120.0
    threads: int | None = None  # torch's CPU threads (default: every core)
    stop_at: int | None = field(default=None, compare=False)  # tests: checkpoint and stop after this step

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model.resolve()),
            "data": str(self.data.resolve()),
            "data_sha256": data_digest(self.data),
            "tuning": self.tuning.to_json(),
            "fit_prompts": self.fit_prompts,
            "validation_prompts": self.validation_prompts,
            "max_new_tokens": self.max_new_tokens,
            "max_tokens": self.max_tokens,
        }


def model_digest(folder: Path) -> str:
    """SHA-256 over a Hugging Face folder's config and weight files (names and contents, in order)."""
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix == ".safetensors")
    if not any(p.suffix == ".safetensors" for p in files):
        raise JobError(f"{folder} holds no safetensors weights: a Hugging Face model folder is needed")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _load(folder: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.train(False)  # evaluation mode; the fine-tune switches its own copy to training
    return model


def _experts_of(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise JobError(f"{folder}/config.json names no expert count: is it a mixture-of-experts model?")


def replay_metrics(trace: RoutingTrace, slots: int, predictor: ExpertPredictor | None = None) -> dict[str, Any]:
    """Distinct experts per sequence and layer, and each policy's decode hit rate at C = ``slots``."""
    hits = {policy: replay(trace, CacheConfig(slots=slots, policy=policy)).hit_rate for policy in REPLAYED}
    if predictor is not None:
        layers = [predictor.layer(i) for i in range(predictor.layers)]
        config = CacheConfig(slots=slots, policy="predicted", predictor="in memory")
        hits["predicted"] = replay(trace, config, layers).hit_rate
    return {
        "distinct_experts": distinct_per_layer(trace),
        "distinct_experts_decoding": distinct_per_layer(trace, decode_only=True),
        "hit_rate": hits,
        "sequences": len(trace.sequences),
        "decode_tokens": trace.decode_tokens(),
    }


class MelinoeJob:
    def __init__(self, options: MelinoeJobOptions, *, progress: bool = True) -> None:
        self.options = options
        self.out = options.out
        try:
            settings = options.settings()
        except ValueError as exc:
            raise JobError(str(exc)) from None
        self.job = Job(self.out, kind=JOB_KIND, settings=settings, progress=progress)
        self._data: TuningData | None = None

    # --- shared ------------------------------------------------------------------------------------

    def data(self) -> TuningData:
        if self._data is None:
            from transformers import AutoTokenizer

            from thrifty.moe_runtime.melinoe.data import load_data

            tokenizer = AutoTokenizer.from_pretrained(self.options.model)
            self._data = load_data(self.options.data, tokenizer, max_tokens=self.options.max_tokens)
        return self._data

    def _eos(self, model: PreTrainedModel) -> int | None:
        eos = model.generation_config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return eos if isinstance(eos, int) else model.config.eos_token_id

    def _record(self, model: PreTrainedModel, who: str, context: StageContext) -> dict[str, RoutingTrace]:
        from thrifty.moe_runtime.melinoe.routing import record_generations

        o = self.options
        traces = {}
        for split, count in (("fit", o.fit_prompts), ("validation", o.validation_prompts)):
            prompts = self.data().prompts("train" if split == "fit" else "validation", count)
            bar = context.progress(len(prompts), desc=f"{context.name}: {who} decoding {split} prompts")
            trace = record_generations(
                model, prompts, max_new_tokens=o.max_new_tokens, eos_token_id=self._eos(model), progress=bar
            )
            bar.close()
            trace.source |= {"model": who, "split": split}
            trace.save(self._trace_path(who, split))
            traces[split] = trace
        return traces

    def _trace_path(self, who: str, split: str) -> Path:
        path = self.out / TRACES / f"{who}.{split}.trace.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _validation_nll(self, model: PreTrainedModel) -> float:
        from torch.nn import functional as F

        total, count = 0.0, 0
        model.train(False)
        with torch.no_grad():
            for batch in self.data().validation_batches(self.options.tuning.batch_size):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"][:, 1:]
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum",
                    ignore_index=-100,
                )  # fmt: skip
                total += float(loss)
                count += int((labels != -100).sum())
        return total / max(count, 1)

    # --- stages ------------------------------------------------------------------------------------

    def _baseline(self, context: StageContext) -> dict[str, Any]:
        model = _load(self.options.model)
        traces = self._record(model, "base", context)
        return {
            "validation_nll": self._validation_nll(model),
            "validation": replay_metrics(traces["validation"], self.options.tuning.slots),
        }

    def _tune(self, context: StageContext) -> dict[str, Any]:
        from safetensors.torch import load_file, save_file

        s = self.options.tuning
        torch.manual_seed(s.seed)
        tuner = Tuner(_load(self.options.model), s)
        params = tuner.trainable()
        optimizer = torch.optim.AdamW(params.values(), lr=s.learning_rate, weight_decay=s.weight_decay)
        checkpoint = context.checkpoint
        progress: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "history": []}
        if (checkpoint / "progress.json").is_file():
            state = load_file(str(checkpoint / "trainable.safetensors"))
            if set(state) != set(params):
                raise JobError(f"{checkpoint} holds another model's tensors: delete it or use --fresh")
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(value)
            load_optimizer(optimizer, checkpoint)
            progress = json.loads((checkpoint / "progress.json").read_text())
            logger.info("resuming the fine-tune at step %d", progress["step"])

        def save() -> None:
            partial = checkpoint.with_name(checkpoint.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            save_file({n: p.detach().contiguous() for n, p in params.items()}, str(partial / "trainable.safetensors"))
            save_optimizer(optimizer, partial)
            (partial / "progress.json").write_text(json.dumps(progress))
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            swap_in(partial, checkpoint)

        tuner.model.train()
        bar = context.progress(s.steps, initial=progress["step"])
        started = time.monotonic() - progress["elapsed_s"]
        last_save = time.monotonic()
        window: list[dict[str, float]] = []
        while progress["step"] < s.steps:
            step = progress["step"]
            for group in optimizer.param_groups:
                group["lr"] = s.learning_rate_at(step)
            parts = tuner.loss(self.data().batch(step, s.batch_size, s.seed))
            parts.total.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(parts.to_json())
            progress["step"] = step + 1
            progress["elapsed_s"] = time.monotonic() - started
            if len(window) == 10 or progress["step"] == s.steps:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                progress["history"].append({"step": progress["step"], **mean})
                bar.set_postfix(nll=f"{mean['nll']:.3f}", cache=f"{mean['cache']:.3f}", rank=f"{mean['rank']:.2f}")
                window = []
            bar.update(1)
            if (
                time.monotonic() - last_save >= self.options.checkpoint_every_s
                or progress["step"] == self.options.stop_at
            ):
                save()
                last_save = time.monotonic()
            if progress["step"] == self.options.stop_at:
                bar.close()
                raise StopRequested(f"stopped after step {progress['step']}")
        bar.close()
        model = tuner.merged()
        model.config.output_router_logits = False
        from transformers import AutoTokenizer

        folder = self.out / "tuned"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        AutoTokenizer.from_pretrained(self.options.model).save_pretrained(partial)
        swap_in(partial, folder)
        (folder / "history.json").write_text(json.dumps(progress["history"]))
        last = progress["history"][-1] if progress["history"] else {}
        return {
            "steps": progress["step"],
            "train_seconds": round(progress["elapsed_s"], 1),
            "final": last,
            "validation_nll": self._validation_nll(model),
        }

    def _predictor(self, context: StageContext) -> dict[str, Any]:
        s = self.options.tuning
        base = {split: RoutingTrace.load(self._trace_path("base", split)) for split in ("fit", "validation")}
        model = _load(self.out / "tuned")
        layer_ids = decoder_layer_ids(moe_blocks(model))
        tuned = self._record(model, "tuned", context)
        record: dict[str, Any] = {}
        for who, traces in (("base", base), ("tuned", tuned)):
            fit = traces["fit"]
            predictor = ExpertPredictor.fit(fit.sequences, experts=fit.experts, top_k=fit.top_k, layer_ids=layer_ids)
            layers = [predictor.layer(i) for i in range(predictor.layers)]
            share, by_share = choose_pin_share(traces["validation"], layers, s.slots)
            predictor = replace(predictor, pin_share=share)
            if who == "tuned":
                predictor.save(self.out)
            quality = predictor.quality(traces["validation"].sequences, s.slots)
            record[who] = replay_metrics(traces["validation"], s.slots, predictor) | {
                "predictor": {
                    "precision": quality.precision,
                    "recall": quality.recall,
                    "set_recall": quality.set_recall,
                    "pin_share": share,
                    "hit_rate_by_pin_share": {f"{k:g}": v for k, v in by_share.items()},
                }
            }
        return record

    def _artifact(self, context: StageContext) -> dict[str, Any]:
        o = self.options
        done = self.job.done()
        target = self.out / "artifact"
        with ArtifactWriter(target, KIND, VERSION, replace=True) as writer:
            shutil.copytree(
                self.out / "tuned", writer.staging / MODEL_DIR, ignore=shutil.ignore_patterns("history.json")
            )
            shutil.copy2(self.out / PREDICTOR_FILE, writer.staging / PREDICTOR_FILE)
            shutil.copy2(self.out / "tuned" / "history.json", writer.staging / "history.json")
            shutil.copytree(self.out / TRACES, writer.staging / TRACES)
            data = self.data()
            base_nll, tuned_nll = done["baseline"]["validation_nll"], done["tune"]["validation_nll"]
            writer.commit(
                inputs={
                    "base_model": str(o.model.resolve()),
                    "base_model_sha256": model_digest(o.model),
                    "data": data.source,
                    "data_sha256": data.digest,
                },
                metrics={
                    "validation_nll": {"base": base_nll, "tuned": tuned_nll},
                    "base": done["predictor"]["base"],
                    "tuned": done["predictor"]["tuned"],
                    "train_seconds": done["tune"]["train_seconds"],
                    "final_losses": done["tune"]["final"],
                },
                slots=o.tuning.slots,
                gamma=o.tuning.gamma,
                cache_weight=o.tuning.cache_weight,
                rank_weight=o.tuning.rank_weight,
                margin=o.tuning.margin,
                load_balance=o.tuning.load_balance,
                lora={"rank": o.tuning.lora_rank, "alpha": o.tuning.lora_alpha},
                settings=o.settings(),
            )
        return {"artifact": str(target)}

    def run(self) -> dict[str, Any]:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        else:
            torch.set_num_threads(os.cpu_count() or 1)
        if not (self.options.model / "config.json").is_file():
            raise JobError(f"no Hugging Face model folder at {self.options.model}")
        experts = _experts_of(self.options.model)
        if self.options.tuning.slots > experts:
            raise JobError(f"--slots {self.options.tuning.slots} is more than the model's {experts} experts per layer")
        self.out.mkdir(parents=True, exist_ok=True)
        self.job.state()  # a folder holding another job is refused before anything changes
        self.data()  # a bad data file fails before the base model is loaded
        records = {
            "baseline": self.job.stage("baseline", self._baseline),
            "tune": self.job.stage("tune", self._tune),
            "predictor": self.job.stage("predictor", self._predictor),
        }
        records["artifact"] = self.job.stage("artifact", self._artifact)
        return records


def run_job(options: MelinoeJobOptions, *, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    job = MelinoeJob(options, progress=progress)
    if fresh:
        job.job.fresh()
    return job.run()
