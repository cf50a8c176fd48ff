"""The evaluation report in markdown: results per dataset, gains of the reference, ELFIS meta-categories, problems."""
from __future__ import annotations

import re
from typing import Any

from pas.evaluate.metrics import ELFIS_GAIN, GAIN, SUMMARY

_FEWSHOT = re.compile(r"^fewshot_(\d+)$")
PROTOCOL_ORDER = ("linear", "knn", "fewshot", "full")
MAX_PROBLEMS = 30  # listed per dataset; the count is always given


def _order(name: str) -> tuple:
    """linear, linear_elfis, knn, fewshot_1, fewshot_5, ..., full, full_elfis, then anything else."""
    match = _FEWSHOT.match(name)
    base = "fewshot" if match else name.removesuffix("_elfis")
    rank = PROTOCOL_ORDER.index(base) if base in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return (rank, int(match.group(1)) if match else 0, name.endswith("_elfis"), name)


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "—"
    text = f"{100 * result['top1']:.1f}"
    return text + (f" ± {100 * result['top1_std']:.1f}" if "top1_std" in result else "")


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def _results_table(metrics: dict[str, Any], inits: list[str], reference: str,
                   mixed: dict[str, Any] | None = None) -> list[str]:
    baselines = [i for i in inits if i != reference]
    names = sorted({n for i in inits for n in metrics[i]}, key=_order)
    head = ["result", *inits, *(f"{reference} − {b}" + (" **(different architecture)**" if b in (mixed or {}) else "")
                                for b in baselines)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = [name, *(_cell(metrics[i].get(name)) for i in inits),
               *(_signed(metrics[GAIN].get(b, {}).get(name)) for b in baselines)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _elfis_section(dataset: str, entry: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    lines = []
    for init, record in entry["inits"].items():
        groups = record.get("meta_categories")
        if not groups:
            continue
        lines.append(f"**{init}** — first model (cross-fitted linear probe) top-1 "
                     f"{100 * record.get('first_model_top1', float('nan')):.1f}; meta-categories:")
        lines += [f"{k}. {', '.join(names)}" for k, names in enumerate(groups, start=1)]
        for plain, delta in metrics.get(ELFIS_GAIN, {}).get(init, {}).items():
            lines.append(f"- {plain}: plain head {_cell(metrics[init][plain])}, ELFIS "
                         f"{_cell(metrics[init][plain + '_elfis'])} ({_signed(delta)})")
        lines.append("")
    return ([f"### ELFIS on {dataset}", ""] + lines) if lines else []


def honesty_lines(summary: dict[str, Any]) -> list[str]:
    """Warnings a reader cannot miss: gains across architectures, oracle concepts (or the overlap found)."""
    lines = []
    for baseline, pair in summary.get("mixed_architecture", {}).items():
        lines += [f"> **CONFOUNDED: the gain over {baseline} compares different architectures ({pair['reference']} "
                  f"vs {pair['baseline']}); it mixes architecture with pretraining data and is not evidence for "
                  f"or against the data.** (evaluate.allow_mixed_arch is true)", ""]
    for dataset, overlap in summary.get("concept_overlap", {}).items():
        share = f"{overlap['named']} of {overlap['classes']} classes of {dataset}"
        sources = ", ".join(f"{n} {s}" for s, n in sorted(overlap["by_source"].items())) or "none"
        if overlap["oracle"]:
            lines += [f"> **ORACLE CONCEPTS: the shipped concept bank names {share} (by source: {sources}; e.g. "
                      f"{', '.join(overlap['examples'][:5])}). This result measures the oracle-concept setting, "
                      f"not the paper's autonomous one (an LLM alone: concepts.discover.use_bank: false).**", ""]
        elif overlap["named"]:
            lines += [f"Concept overlap: concepts name {share} (by source: {sources}); none of those comes from the "
                      f"shipped bank, so the concepts were not handed the downstream classes.", ""]
        else:
            lines += [f"Concept overlap: no concept names any of the {overlap['classes']} classes of {dataset}.", ""]
    return lines


def render_eval_md(metrics: dict[str, Any], index: dict[str, Any], reference: str,
                  coordinates: dict[str, Any] | None = None) -> str:
    """Markdown: what was compared, a table per dataset (top-1 %, gains in points), ELFIS, data problems."""
    order = [spec["name"] for spec in index.get("config", {}).get("inits", [])] or list(index["inits"])
    inits = [reference] + [name for name in order if name != reference and name in index["inits"]]
    lines = ["# Downstream evaluation", ""]
    summary_all = metrics.get(SUMMARY, {})
    lines += honesty_lines(summary_all)
    if coordinates:
        lines += ["Experiment: " + ", ".join(f"{k} = {v}" for k, v in coordinates.items()), ""]
    lines += ["| init | architecture | weights |", "|---|---|---|"]
    lines += [f"| {name} | {index['inits'][name]['arch']} | {index['inits'][name]['weights']} |" for name in inits]
    lines += ["", f"Test top-1 in %; few-shot rows are mean ± std over seeds; the last columns are the gain of "
              f"**{reference}** over each baseline in points.", ""]
    for dataset, entry in index["datasets"].items():
        if "skipped" in entry:
            lines += [f"## {dataset}: skipped", "", f"- {entry['skipped']}", ""]
            continue
        lines += [f"## {dataset}", "",
                  f"{entry['format']}, {entry['num_classes']} classes, {entry['train']['images']} train / "
                  f"{entry['test']['images']} test images.", ""]
        lines += _results_table(metrics[dataset], inits, reference, summary_all.get("mixed_architecture")) + [""]
        lines += _elfis_section(dataset, entry, metrics[dataset])
        problems = entry.get("problems", [])
        if problems:
            lines += [f"### Data problems in {dataset} ({len(problems)}; those items were left out)", ""]
            lines += [f"- {p}" for p in problems[:MAX_PROBLEMS]]
            lines += [f"- ... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
            lines.append("")
    summary = metrics.get(SUMMARY, {}).get(GAIN, {})
    if summary:
        lines += [f"## Summary: gain of {reference} (mean over {metrics[SUMMARY]['datasets']} dataset(s), points)", ""]
        for baseline, by_result in summary.items():
            parts = ", ".join(f"{n} {_signed(v)}" for n, v in sorted(by_result.items(), key=lambda kv: _order(kv[0])))
            lines.append(f"- over **{baseline}**: {parts}")
        lines.append("")
    return "\n".join(lines)
