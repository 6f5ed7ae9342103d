"""Where a module sits, in words: the ``where`` column of every table, read from the attachment a record
stores (``attach.Attachment.as_dict()``). A pure function of that dict, apart from ``attach`` so that the
report layer reads it without importing torch."""

from __future__ import annotations

from typing import Optional, Sequence

from .baselines import NATIVE


def _stage_text(stages: Sequence[int]) -> str:
    return f"stage{'s' if len(stages) > 1 else ''} {','.join(map(str, stages))}"


def describe(attachment: Optional[dict]) -> str:
    """The table's `where` text from ``Attachment.as_dict()``: 'block x16', 'conv, stage 4 x3',
    'bare: native SE x16 removed', 'stage 3, native SE kept', ... (older records say 'replaced')."""
    if not attachment:
        return "—"
    a, n = attachment, attachment.get("sites", 0)
    native = a.get("native") or "attention"
    removed, kept = a.get("native_removed", a.get("replaced")) or 0, a.get("native_kept") or 0
    if a["placement"] == "none":
        return f"bare: native {native} x{removed} removed" if removed else "—"
    if a["placement"] == NATIVE:
        return f"as built: native {native} x{n}" if n else "as built (no native attention)"
    stages = a.get("stages") or []
    if a["placement"] == "stage":
        text = _stage_text(stages) + ("" if n == len(stages) else f" x{n}")
    else:
        text = f"{a['placement']}{', ' + _stage_text(stages) if stages else ''} x{n}"
    if removed:
        text += f" (native {native} x{removed} removed)"
    return text + (f", native {native} kept" if kept else "")
