"""Where each registered objective sits in the taxonomy of "A Survey of Direct Preference Optimization".

The survey (Liu et al., arXiv 2503.11701) sorts DPO variants along four dimensions, each with sub-axes; the axis
values below follow the section headings of its companion list (``liushunyu/awesome-direct-preference-optimization``):

- **data strategy**: data *quality* (heterogeneity, distinguishability, noise), preference *feedback* (point-, pair-,
  list-wise) and preference *granularity* (token, step, sentence, turn);
- **learning framework**: *paradigm* (offline, online, active) and *objective* (multi-objective, self-play);
- **constraint mechanism**: *reference* (fixed, dynamic, free), *divergence* (standard reverse KL, diversity,
  generalization) and *safety*;
- **model property**: *generation* (distribution, length) and *optimization* (likelihood, alignment).

Every name in :data:`metapo.objectives.registry.REGISTRY` must have one line in :data:`PLACEMENTS`; the test suite
fails otherwise. ``metapo objectives --format taxonomy`` renders the table as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# Allowed values per axis; "-" means the method does not address that axis (the plain DPO choice).
AXES: dict[str, tuple[str, ...]] = {
    "quality": ("-", "heterogeneity", "distinguishability", "noise"),
    "feedback": ("point", "pair", "list"),
    "granularity": ("token", "step", "sentence", "turn"),
    "paradigm": ("offline", "online", "active"),
    "objective": ("-", "multi-objective", "self-play"),
    "reference": ("fixed", "dynamic", "free"),
    "divergence": ("standard", "diversity", "generalization"),
    "safety": ("-", "safety"),
    "generation": ("-", "distribution", "length"),
    "optimization": ("-", "likelihood", "alignment"),
}

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "Data strategy": ("quality", "feedback", "granularity"),
    "Learning framework": ("paradigm", "objective"),
    "Constraint mechanism": ("reference", "divergence", "safety"),
    "Model property": ("generation", "optimization"),
}


@dataclass(frozen=True)
class Placement:
    """One objective's position on every axis. A value may join several with ``+`` (``"offline+online"``)."""

    feedback: str
    granularity: str
    paradigm: str
    reference: str
    divergence: str = "standard"
    quality: str = "-"
    objective: str = "-"
    safety: str = "-"
    generation: str = "-"
    optimization: str = "-"

    def __post_init__(self) -> None:
        for f in fields(self):
            for value in getattr(self, f.name).split("+"):
                if value not in AXES[f.name]:
                    raise ValueError(f"{f.name}={value!r} is not a survey value; choose from {AXES[f.name]}")


P = Placement
# One line per registered objective. Add a line here when you register a new one.
PLACEMENTS: dict[str, Placement] = {
    "dpo": P("pair", "sentence", "offline", "fixed"),
    "ipo": P("pair", "sentence", "offline", "fixed"),
    "cdpo": P("pair", "sentence", "offline", "fixed", quality="noise"),
    "hinge": P("pair", "sentence", "offline", "fixed"),
    "robust_dpo": P("pair", "sentence", "offline", "fixed", quality="noise"),
    "ld_dpo": P("pair", "sentence", "offline", "fixed", generation="length"),
    "rpo": P("pair", "sentence", "offline", "fixed", optimization="likelihood"),
    "simpo": P("pair", "sentence", "offline", "free", generation="length"),
    "triple_po": P("pair", "sentence", "offline", "free", optimization="likelihood"),
    "modpo": P("pair", "sentence", "offline", "fixed", objective="multi-objective"),
    "rationale_dpo": P("pair", "step", "offline", "fixed", quality="distinguishability"),
    "vpo": P("pair", "sentence", "offline+online", "fixed", optimization="likelihood"),
    "hypo": P("pair", "sentence", "offline+online", "fixed", generation="distribution"),
    "fspo": P("pair", "sentence", "offline", "fixed", quality="heterogeneity"),
    "spo_selfsup": P("pair", "sentence", "offline", "fixed", quality="distinguishability"),
    "sparse_po": P("pair", "token", "offline", "fixed"),
    "pro": P("list", "sentence", "offline", "free", optimization="likelihood"),
    "tree_po": P("list", "step", "offline", "fixed"),
    "implicit_sft": P("point", "token", "offline", "fixed", divergence="diversity"),
    "upo": P("pair", "sentence", "online", "dynamic", quality="noise", optimization="likelihood"),
    "online_dpo": P("pair", "sentence", "online", "fixed"),
    "online_ipo": P("pair", "sentence", "online", "fixed", objective="self-play"),
    "egpo": P("pair", "sentence", "online", "fixed", objective="self-play"),
    "inpo": P("pair", "sentence", "online", "dynamic", objective="self-play"),
    "sppo": P("pair", "sentence", "online", "dynamic", objective="self-play"),
    "gpo": P("pair", "sentence", "online", "dynamic", objective="self-play"),
    "apo": P("pair", "sentence", "online", "dynamic"),
    "xpo": P("pair", "sentence", "online", "fixed"),
    "nash_mp": P("pair", "sentence", "online", "dynamic", objective="self-play"),
}


def missing_placements(names: list[str] | None = None) -> list[str]:
    """Registered objectives (or ``names``) that have no placement, in registry order."""
    if names is None:
        from metapo.objectives.registry import REGISTRY

        names = list(REGISTRY)
    return [name for name in names if name not in PLACEMENTS]


def render_markdown() -> str:
    """The taxonomy of every registered objective as Markdown: a table per objective and a grouping per axis.

    Raises:
        ValueError: A registered objective has no placement (the message names it and this file).
    """
    from metapo.objectives.registry import REGISTRY

    missing = missing_placements(list(REGISTRY))
    if missing:
        raise ValueError(
            f"objective(s) {missing} have no line in PLACEMENTS of {__name__.replace('.', '/')}.py"
        )
    axes = [axis for group in DIMENSIONS.values() for axis in group]
    lines = [
        "# metapo's objectives in the DPO survey's taxonomy",
        "",
        'Axes of "A Survey of Direct Preference Optimization" (arXiv 2503.11701); "-" means the method keeps DPO\'s '
        "choice on that axis. Generated by `metapo objectives --format taxonomy` from the objective registry.",
        "",
        "| objective | arXiv | " + " | ".join(axes) + " |",
        "|---|---|" + "---|" * len(axes),
    ]
    for name, spec in REGISTRY.items():
        placement = PLACEMENTS[name]
        cells = [getattr(placement, axis).replace("+", " + ") for axis in axes]
        lines.append(f"| `{name}` | {spec.arxiv or '—'} | " + " | ".join(cells) + " |")
    for dimension, group in DIMENSIONS.items():
        lines += ["", f"## {dimension}", ""]
        for axis in group:
            lines.append(f"- **{axis}**")
            for value in AXES[axis]:
                members = [n for n in REGISTRY if value in getattr(PLACEMENTS[n], axis).split("+")]
                if value != "-" and members:
                    lines.append(f"  - {value}: " + ", ".join(f"`{m}`" for m in members))
    return "\n".join(lines) + "\n"
