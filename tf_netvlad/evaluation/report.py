"""Reporting of evaluation results: recall@N tables and the recall@N keys of a results dict.

A results dict (from `evaluation.evaluate` / `evaluate_descriptors`) holds `"recall@N"` fractions,
optionally per query condition (`"recall@N/night"`) and from an approximate index
(`"approx/recall@N"`, `"approx/recall@N/night"`). TF-free and faiss-free.
"""

import re

_RECALL_KEY = re.compile(r"^(approx/)?recall@(\d+)(?:/(.+))?$")


def recall_ns(results):
    """The N values of the plain `"recall@N"` keys of a results dict, sorted."""
    return sorted(int(m.group(2)) for m in map(_RECALL_KEY.match, results)
                  if m and not m.group(1) and not m.group(3))


def recall_variants(results):
    """Key prefixes/suffixes present: `("", "")` (exact, all queries), `("", "/night")`,
    `("approx/", "")`, ... in the order exact overall, exact per condition, approximate."""
    found = {}
    for m in map(_RECALL_KEY.match, results):
        if m:
            found.setdefault((m.group(1) or "", f"/{m.group(3)}" if m.group(3) else ""), None)
    return sorted(found, key=lambda v: (v[0] != "", v[1] != ""))


def _column_label(label, variant):
    prefix, suffix = variant
    parts = [str(label)] + (["approx"] if prefix else []) + ([suffix[1:]] if suffix else [])
    return " ".join(parts)


def _run_summary(label, run):
    excluded = run.get("num_queries_without_positives", 0)
    text = (f"{label}: {run['num_queries']} queries ({excluded} without positives, "
            f"excluded), {run.get('num_db', '?')} db images, dim {run.get('descriptor_dim', '?')}")
    unreadable = (run.get("num_db_unreadable", 0), run.get("num_queries_unreadable", 0))
    if any(unreadable):
        text += f"; unreadable images left out: {unreadable[0]} db, {unreadable[1]} queries"
    if run.get("protocol", "pitts") != "pitts":
        text += f", protocol {run['protocol']}"
    if "approx_index" in run:
        text += (f"; approx: faiss {run['approx_index']} trained on "
                 f"{run.get('approx_train_size', '?')}, nprobe {run.get('approx_nprobe')}")
    return text


def format_recall_table(results, labels=None):
    """Plain-text table of recall@N (%) for one results dict or a list of them.

    One column per run; a run with per-condition (`recall@N/night`) or approximate
    (`approx/recall@N`) results gets one more column for each of them.
    """
    many = isinstance(results, (list, tuple))
    runs = list(results) if many else [results]
    if not runs:
        raise ValueError("`results` is empty: nothing to format.")
    if labels is None:
        labels = ([r.get("split") or f"run {i + 1}" for i, r in enumerate(runs)] if many
                  else ["recall"])
    if len(labels) != len(runs):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(runs)} results.")
    ns = sorted(set().union(*(recall_ns(r) for r in runs)))
    columns = [(label, run, variant) for label, run in zip(labels, runs)
               for variant in (recall_variants(run) or [("", "")])]
    headers = [_column_label(label, variant) for label, _, variant in columns]
    width = max(9, *(len(h) for h in headers))
    lines = [_run_summary(label, run) for label, run in zip(labels, runs) if "num_queries" in run]
    lines.append("N".rjust(5) + "".join(h.rjust(width + 2) for h in headers))
    for n in ns:
        cells = []
        for _, run, (prefix, suffix) in columns:
            value = run.get(f"{prefix}recall@{n}{suffix}")
            cells.append(("-" if value is None else f"{100 * value:.2f}%").rjust(width + 2))
        lines.append(f"{n:5d}" + "".join(cells))
    return "\n".join(lines)
