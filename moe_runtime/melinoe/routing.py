"""Recording which experts a transformers MoE model routes to while it generates: the traces the activation
predictor is fitted on and the cache policies are judged on.

Forward hooks on the routers (each MoE block's ``gate``, :func:`~thrifty.moe_runtime.melinoe.tuning.moe_blocks`)
read the ids they choose, so the model runs unchanged at full speed; a greedy generation at batch size 1
gives one prompt pass and one pass per generated token, a :class:`~thrifty.moe_runtime.traces.TraceSequence`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from thrifty.moe_runtime.melinoe.tuning import moe_blocks
from thrifty.moe_runtime.traces import RoutingTrace, TraceSequence

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@contextmanager
def recording_routes(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While the block runs, every forward pass appends its routing, [tokens, layers, k], to the list."""
    blocks = moe_blocks(model)
    per_layer: list[list[torch.Tensor]] = [[] for _ in blocks]

    def hook(index: int, top_k: int) -> Any:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            if isinstance(output, tuple) and len(output) == 3:
                ids = output[2]
            else:  # a router that returns only logits: its top-k of the softmax, as it would route
                logits = output[0] if isinstance(output, tuple) else output
                ids = torch.softmax(logits.float(), dim=-1).topk(top_k, dim=-1).indices
            per_layer[index].append(ids.detach().reshape(-1, top_k).to("cpu", torch.int16))

        return record

    handles = [b.router.register_forward_hook(hook(i, b.top_k)) for i, b in enumerate(blocks)]
    passes: list[torch.Tensor] = []
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()
        for step in zip(*per_layer, strict=True):
            passes.append(torch.stack(step, dim=1))


def record_generations(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    progress: Any = None,
) -> RoutingTrace:
    """Greedy generations of ``prompts`` (token ids), one at a time, and the routing of every pass.

    ``progress``: a tqdm-like bar advanced once per prompt.
    """
    blocks = moe_blocks(model)
    experts, top_k = blocks[0].num_experts, blocks[0].top_k
    sequences = []
    device = next(model.parameters()).device
    for prompt in prompts:
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        with recording_routes(model) as passes, torch.no_grad():
            model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_token_id,
                pad_token_id=eos_token_id,
            )
        sequences.append(TraceSequence(torch.cat(passes), prefill=passes[0].shape[0]))
        if progress is not None:
            progress.update(1)
    source = {"kind": "recorded", "max_new_tokens": max_new_tokens, "prompts": len(prompts)}
    return RoutingTrace(experts, top_k, len(blocks), sequences, source)
