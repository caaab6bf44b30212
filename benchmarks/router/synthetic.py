"""A routing log where the task is written in the query and is all there is to learn.

The LLMRouter queries keep their text, prices and costs; their outcomes are redrawn. Each query's task is
its topic: the nearest of 3 k-means centres of the queries' MiniLM embeddings, so the text reveals it.
Every (query, model) outcome is then a coin flip at that (topic, model)'s rate, the rates being the
LLMRouter clusters' per-model accuracies lifted toward a strong benchmark's (0.35 + 0.6 · rate), one
cluster per topic. Routing by the true topic's rates is the best any router can do here; per-task means
estimate those rates from the sparse training cells, and a learned router must find the topic from the
text. It is the regime of a benchmark whose tasks are distinct datasets with strong task × model effects.

    .venv-router/bin/python benchmarks/router/synthetic.py --out data/router-synthetic/log.jsonl
    .venv-router/bin/python benchmarks/router/run.py --data data/router-synthetic/log.jsonl --embedder minilm \\
        --seeds 0 1 2 --work data/router-bench-synthetic --report benchmarks/router/synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from run import Vectors

from thrifty.router.embedding import load_embedder
from thrifty.router.eval_log import write_eval_log
from thrifty.router.kmeans import assign, kmeans
from thrifty.router.outcomes import OutcomeTable
from thrifty.router.training import load_outcomes

TOPICS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/routing/llmrouter"))
    parser.add_argument("--out", type=Path, default=Path("data/router-synthetic/log.jsonl"))
    parser.add_argument("--cache", type=Path, default=Path("data/router-bench/embeddings"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    table, _ = load_outcomes([args.data])
    x = Vectors(load_embedder("minilm"), table, args.cache)(table).astype(np.float64)
    topic = assign(x, kmeans(x, TOPICS, 0)[0])
    sizes = np.bincount(topic, minlength=TOPICS)
    clusters = sorted(set(table.tasks))
    if len(clusters) < TOPICS:
        raise SystemExit(f"{args.data} has {len(clusters)} task labels; the rates need {TOPICS}")
    labels = np.array(table.tasks)
    rates = np.stack([table.scores[labels == c].mean(0) for c in clusters[:TOPICS]])
    # The largest topic gets the easiest cluster's rates and the smallest the hardest's, so that most queries
    # have several models that usually answer them, as on a benchmark where the constant router scores > 0.8.
    order = np.argsort(-sizes)
    by_topic = np.empty_like(rates)
    by_topic[order] = rates[np.argsort(-rates.mean(1))]
    by_topic = np.clip(0.35 + 0.6 * by_topic, 0.0, 0.98)
    rng = np.random.default_rng(args.seed)
    scores = (rng.random(table.scores.shape) < by_topic[topic]).astype(np.float64)
    tasks = tuple(f"topic-{t}" for t in topic)
    log = OutcomeTable(table.queries, table.models, scores, table.costs, tasks, table.clients)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = write_eval_log(args.out, log.to_records())
    print(f"{written} records, {len(table)} queries; topics of {sizes.tolist()} queries")
    for t in range(TOPICS):
        print(f"topic-{t} rates: " + " ".join(f"{r:.2f}" for r in by_topic[t]))


if __name__ == "__main__":
    main()
