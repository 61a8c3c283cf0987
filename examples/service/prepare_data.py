"""Write a metapo task's prompts in the layout verl or OpenRLHF reads, carrying what the reward service needs.

    python examples/service/prepare_data.py --engine verl --task essay --out data/essay-verl
    python examples/service/prepare_data.py --engine openrlhf --task essay --out data/essay-openrlhf

verl: ``train.parquet`` with ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model``
(``{"style": "model", "ground_truth": ...}``) and ``extra_info`` (``prompt`` -- the task text the judge sees --,
``lineage``, ``columns``: the task's other columns), the fields verl's RL dataset and reward function read.
OpenRLHF: ``train.jsonl`` with ``prompt`` (chat messages, for ``--input_key prompt --apply_chat_template``) and
``label`` (a JSON object as text: ``task_input``, ``lineage`` and the task's columns, for ``--label_key label``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def rows(task_name: str, dataset: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The task's examples as plain dicts, with their rubric lineage."""
    from metapo.tasks import get_task

    task = get_task(task_name)
    data = task.load(dataset, limit=limit)
    out = []
    for example in data:
        example = dict(example)
        example["lineage"] = task.lineage_key(example)
        out.append(example)
    return out


def for_verl(example: dict[str, Any], task_name: str) -> dict[str, Any]:
    columns = {k: v for k, v in example.items() if k not in ("prompt", "task_input", "lineage")}
    return {
        "data_source": f"metapo/{task_name}",
        "prompt": example["prompt"],
        "ability": task_name,
        "reward_model": {"style": "model", "ground_truth": str(columns.get("gold_answer") or "")},
        "extra_info": {
            "prompt": example["task_input"],
            "lineage": example["lineage"],
            "columns": json.dumps(columns, ensure_ascii=False),
        },
    }


def for_openrlhf(example: dict[str, Any]) -> dict[str, Any]:
    label = {k: v for k, v in example.items() if k != "prompt"}
    return {"prompt": example["prompt"], "label": json.dumps(label, ensure_ascii=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("verl", "openrlhf"), required=True)
    parser.add_argument("--task", default="essay")
    parser.add_argument("--dataset", default=None, help="The task's data source (default: its built-in set).")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    examples = rows(args.task, args.dataset, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.engine == "verl":
        from datasets import Dataset

        Dataset.from_list([for_verl(e, args.task) for e in examples]).to_parquet(str(args.out / "train.parquet"))
        written = args.out / "train.parquet"
    else:
        written = args.out / "train.jsonl"
        with open(written, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(for_openrlhf(example), ensure_ascii=False) + "\n")
    print(f"{len(examples)} prompts -> {written}")  # noqa: T201 - a command-line script


if __name__ == "__main__":
    main()
