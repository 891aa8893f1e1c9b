"""A saliency store's recorded quality scores (provenance key `quality`) as lines for a person:
what `satpipe store info` and `satpipe store score` print. Reads the record alone, so it needs
nothing from the pipeline that wrote it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def quality_lines(quality: Mapping[str, Any] | None, indent: str = "  ") -> list[str]:
    """One line per score: value [95% interval], chance value, direction, images; then the
    notes and flags. No record: no lines."""
    if not quality:
        return []
    settings = quality.get("settings") or {}
    model = settings.get("model") or {}
    judge = f", model {model.get('arch')} {str(model.get('sha256', ''))[:12]}" if model else ""
    lines = [
        f"{indent}quality ({quality.get('split')} split, {settings.get('rows')} rows, subset of "
        f"{settings.get('n')}{judge}; scored {quality.get('scored')}):"
    ]
    scores = quality.get("scores") or {}
    width = max((len(k) for k in scores), default=0)
    for name, s in scores.items():
        better = "higher" if s.get("higher_is_better") else "lower"
        lines.append(
            f"{indent}  {name:<{width}}  {_num(s.get('value'))} "
            f"[{_num(s.get('low'))}, {_num(s.get('high'))}]  chance {_num(s.get('chance'))}  "
            f"({better} is better, {s.get('n')} images)"
        )
    lines += [f"{indent}  note: {note}" for note in quality.get("notes") or ()]
    lines += [f"{indent}  FLAG: {flag}" for flag in quality.get("flags") or ()]
    return lines
