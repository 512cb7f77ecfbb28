"""A compare report for people (the summary first, then the kept differences) or as one
JSON object (CompareReport.as_json)."""

from __future__ import annotations

import json

from replwatch.compare.display import count_phrase, display_key
from replwatch.compare.model import DEFAULT_IGNORE, CompareOptions, CompareReport


def render_text(report: CompareReport, options: CompareOptions | None = None) -> str:
    """The summary first, then the kept differences."""
    options = options or CompareOptions()
    if not report.dbs:
        where = "no database has keys"
    else:
        where = ", ".join(str(pair) for pair in report.dbs)
    verdict = "EQUAL" if report.equal else "DIFFERENT"
    kinds = ", ".join(
        f"{kind} {report.kind_counts[kind]}"
        for kind in ("type", "value", "ttl")
        if report.kind_counts.get(kind)
    )
    different = f"{report.different} different" + (f" ({kinds})" if kinds else "")
    extra = "extra not checked" if report.sampled else f"{report.extra} extra on target"
    lines = [
        f"source {report.source} vs target {report.target} ({where}): {verdict}",
        f"checked {count_phrase(report.checked, 'key', 'keys')} in {report.seconds:.2f}s: "
        f"{report.equal_keys} equal, {report.missing} missing on target, {different}; {extra}",
    ]
    if report.sampled:
        lines.append(
            f"note: sampled up to {options.sample} source keys per database; keys on the "
            "target only (extra keys) were not checked"
        )
    if report.expire_grace:
        lines.append(
            f"note: target TTLs may be up to {report.expire_grace:g}s longer than the source's "
            "(the sync task's expire_grace)"
        )
    if report.source_expire_grace:
        lines.append(
            f"note: source TTLs may be up to {report.source_expire_grace:g}s longer than the "
            "target's (the expire_grace of a task that writes the source)"
        )
    skipped = report.ignored_by_option
    if skipped:
        # replwatch's own keys (__replwatch:*) are always left out and never noted: they
        # are the heartbeat, probe and checkpoint keys, not the user's data
        globs = " ".join(g for g in options.ignore if g not in DEFAULT_IGNORE)
        left_out = count_phrase(skipped, "source key", "source keys")
        lines.append(f"note: --ignore {globs} left out {left_out}")
    if report.differences:
        total = len(report.differences) + report.omitted
        lines.append(f"differences ({total}):")
        for diff in report.differences:
            lines.append(f"  db {diff.db}  {diff.kind:<7}  {display_key(diff.key)}: {diff.detail}")
        if report.omitted:
            lines.append(
                f"  ... {report.omitted} more not shown "
                f"(--max-differences {options.max_differences})"
            )
    return "\n".join(lines)


def render_json(report: CompareReport) -> str:
    return json.dumps(report.as_json(), indent=2)
