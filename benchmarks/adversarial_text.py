"""Benchmark 6: adversarial text. How long each stage that reads untrusted text takes on hostile inputs.

Each stage (fencing a completion, neutralising a request, the injection and empty-tag detectors, reading JSON
from a judge's answer, finding boxed answers, the ethics word gate, the pairwise verdict, a rubric heading)
gets an input built to make a backtracking regex or a naive scan super-linear. The stage runs at 25k, 50k and
100k characters (the fastest of five runs): a linear stage doubles its time per doubling (growth ~2), a quadratic one quadruples (~4).
The implementation before the hardening (commit 8401a5b, copied below only to measure against) runs on the
same inputs at sizes small enough to finish; its growth shows why it had to go.

    .venv/bin/python benchmarks/adversarial_text.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_result  # noqa: E402

# ----- the implementation before the hardening (8401a5b) -------------------------------------------------------
OLD_TAG = re.compile(r"<\s*/?\s*(?:response|task_input)(?=[\s/>]|\Z)[^<>]*>?", re.IGNORECASE)
OLD_BARE_TAG = re.compile(r"<\s*/?\s*[A-Za-z][\w.:-]{0,63}\s*/?\s*>")
OLD_CONTROL = re.compile(
    r"<[|｜][^<>\n]{0,64}?[|｜]>|\[/?INST\]|<</?SYS>>|<\s*/?\s*(?:s|start_of_turn|end_of_turn|bos|eos|pad|unk)\s*>",
    re.IGNORECASE,
)
OLD_SCORE_TAG = re.compile(
    r"<\s*/?\s*(?:score|scores|grade|grading|rating|reward|judgement|judgment|evaluation|eval|feedback)"
    r"(?=[\s/>])[^<>]*>"
)
OLD_VERDICT_STRIP = re.compile(r"<verdict>.*?</verdict>", re.DOTALL)
OLD_WINNER = re.compile(r"<\s*winner\s*>(.*?)<\s*/\s*winner\s*>", re.IGNORECASE | re.DOTALL)
OLD_HEADING = re.compile(
    r"^#{1,4}\s+(?:\d+[.)]\s+)?(?P<title>.+?)\s*"
    r"\[\s*(?P<lo>-?\d+)\s*(?:-|–|to|\.\.)\s*(?P<hi>-?\d+)\s*(?:,\s*weight\s*(?P<w>\d+(?:\.\d+)?))?\s*\]"
    r"\s*(?:\{#(?P<id>[a-z0-9][a-z0-9_-]*)\})?\s*$"
)


def old_fence(text: str) -> str:
    for pattern in (OLD_TAG, OLD_CONTROL, OLD_BARE_TAG):
        text = pattern.sub(lambda m: m.group(0).replace("<", "&lt;").replace(">", "&gt;"), text)
    return text


def old_extract_json(text: str) -> Any:
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        closing = {"{": "}", "[": "]"}
        stack, in_string, escaped, end = [closing[char]], False, False, None
        for i in range(start + 1, len(text)):
            c = text[i]
            if in_string:
                escaped, in_string = (False, in_string) if escaped else (c == "\\", c != '"')
            elif c == '"':
                in_string = True
            elif c in closing:
                stack.append(closing[c])
            elif c in "}]":
                if c != stack.pop():
                    break
                if not stack:
                    end = i + 1
                    break
        if end is not None:
            try:
                return json.loads(text[start:end])
            except ValueError:
                continue
    return None


def old_find_boxed(text: str) -> int:
    found, pos = 0, 0
    while (match := re.compile(r"\\boxed").search(text, pos)) is not None:
        token = re.match(r"[^\s$]+", text[match.end() + 1 :])  # the old code sliced the text per box
        found += 1
        pos = match.end() + 1 + (token.end() if token else 0)
    return found


# ----- stages: (name, input family, old implementation or None, current implementation) -------------------------
def stages() -> list[
    tuple[str, str, Callable[[int], str], Callable[[str], Any] | None, Callable[[str], Any]]
]:
    from metapo.judges.parsing import extract_json
    from metapo.judges.prompting import fence
    from metapo.judges.types import ChatRequest
    from metapo.meta.detectors import empty_tags, injection_hits
    from metapo.rubric.model import Rubric, RubricError
    from metapo.tasks import get_task
    from metapo.tasks.math_answers import find_boxed

    (too_short,) = [g for g in get_task("ethics").gates() if g.name == "too_short"]
    from metapo.eval.pairwise import parse_winner_tag
    from metapo.reward.gates import Candidate

    def current_json(text: str) -> Any:
        try:
            return extract_json(text)
        except ValueError:
            return None

    def current_heading(text: str) -> Any:
        try:
            return Rubric.parse(text)
        except RubricError:
            return None

    def current_winner(text: str) -> Any:
        try:
            return parse_winner_tag(text)
        except ValueError:
            return None

    def body(text: str) -> Any:
        return ChatRequest(messages=({"role": "user", "content": text},)).body("m")

    return [
        (
            "fence a completion",
            "'<' + n spaces",
            lambda n: "<" + " " * n,
            old_fence,
            lambda t: fence("response", t),
        ),
        (
            "fence a completion",
            "full-width '＜' x n",
            lambda n: "＜" * n,
            old_fence,
            lambda t: fence("response", t),
        ),
        ("neutralise a request", "'< ' x n/2 + zero-width", lambda n: "<\u200b " * (n // 3), None, body),
        (
            "injection detector",
            "'<' + n spaces + 'x'",
            lambda n: "<" + " " * n + "x",
            OLD_SCORE_TAG.search,
            injection_hits,
        ),
        ("empty-tag detector", "'<a' + ' b' x n/2", lambda n: "<a" + " b" * (n // 2), None, empty_tags),
        ("judge answer JSON", "'[' x n", lambda n: "[" * n, old_extract_json, current_json),
        (
            "judge answer JSON",
            "'{\"a\": ' x n/6",
            lambda n: '{"a": ' * (n // 6),
            old_extract_json,
            current_json,
        ),
        (
            "boxed answers",
            "'\\boxed 1 ' x n/9",
            lambda n: "\\boxed 1 " * (n // 9),
            old_find_boxed,
            find_boxed,
        ),
        (
            "ethics word gate",
            "'<verdict>' x n/9",
            lambda n: "<verdict>" * (n // 9),
            lambda t: OLD_VERDICT_STRIP.sub(" ", t),
            lambda t: too_short(Candidate("q", t, {}, True)),
        ),
        (
            "pairwise verdict",
            "'<winner>' x n/8",
            lambda n: "<winner>" * (n // 8),
            OLD_WINNER.findall,
            current_winner,
        ),
        (
            "rubric heading",
            "'## ' + n spaces + 'x'",
            lambda n: "## " + " " * n + "x",
            OLD_HEADING.match,
            current_heading,
        ),
    ]


def _time(fn: Callable[[str], Any], text: str, repeats: int) -> float:
    """The fastest of ``repeats`` runs: on a shared box, outside load only ever adds time."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (a smoke run).")
    args = parser.parse_args()
    sizes = (2_500, 5_000, 10_000) if args.quick else (25_000, 50_000, 100_000)
    # The old implementations run where they finish: the rubric heading was cubic, the rest quadratic.
    old_sizes = (
        {"rubric heading": (250, 500), "boxed answers": (5_000, 10_000)}
        if args.quick
        else {"rubric heading": (500, 1_000), "boxed answers": (50_000, 100_000)}
    )
    old_default = (1_000, 2_000) if args.quick else (5_000, 10_000)
    rows, records = [], []
    for name, family, make, old, new in stages():
        new_times = [_time(new, make(n), 5) for n in sizes]
        record: dict[str, Any] = {
            "stage": name,
            "input": family,
            "sizes": list(sizes),
            "seconds": new_times,
            "growth": new_times[-1] / new_times[-2],
        }
        old_cell = "-"
        if old is not None:
            small = old_sizes.get(name, old_default)
            old_times = [_time(old, make(n), 1) for n in small]
            now_at_small = _time(new, make(small[-1]), 5)
            record["before"] = {
                "sizes": list(small),
                "seconds": old_times,
                "growth": old_times[-1] / old_times[-2],
                "after_at_same_size": now_at_small,
            }
            old_cell = (
                f"{old_times[-1] * 1e3:.1f} ms at {small[-1] // 1000 or small[-1]}"
                f"{'k' if small[-1] >= 1000 else ''} (x{old_times[-1] / old_times[-2]:.1f}); "
                f"now {now_at_small * 1e3:.2f} ms"
            )
        records.append(record)
        rows.append(
            [
                name,
                family,
                f"{new_times[-1] * 1e3:.2f}",
                f"{record['growth']:.2f}",
                old_cell,
            ]
        )
    print(
        table(
            [
                "stage",
                "adversarial input",
                f"ms at {sizes[-1] // 1000}k",
                "growth per doubling",
                "before the hardening",
            ],
            rows,
        )
    )
    path = write_result("adversarial_text", {"quick": args.quick, "stages": records})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
