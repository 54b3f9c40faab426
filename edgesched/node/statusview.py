"""`edgesched status` on a terminal: a node's `/v1/status` and one task's `/v1/tasks/{id}`
as tables (rich).

Every string from the node is shown as plain text: it is never read as rich markup, and
control characters are replaced, so a device or node id cannot restyle or scroll the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

MAX_DEVICES = 50
MAX_DECISIONS = 10


def plain(value: Any) -> Text:
    """`value` as inert text: '-' for None, floats to 3 significant digits."""
    if value is None or value == "":
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return Text("".join(ch if ch.isprintable() else "?" for ch in text))


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")  # wrap, never cut an id short
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else plain(cell) for cell in row))
    return table


def _styled(value: Any) -> Text:
    text = plain(value)
    style = {"online": "green", "ok": "green", "suspect": "yellow", "offline": "red",
             "failed": "red", "rejected": "red", "expired": "red", "timeout": "red"}
    if isinstance(value, str) and value in style:
        text.stylize(style[value])
    return text


def render_status(doc: Mapping[str, Any], console: Console | None = None) -> None:
    """This node, its neighbours, links, devices and its recent decisions."""
    console = console or Console()
    mqtt = doc.get("mqtt") or {}
    tasks = doc.get("tasks") or {}
    sched = doc.get("scheduler") or {}
    head = Text()
    head.append_text(plain(doc.get("node_id")).copy())
    head.stylize("bold")
    head.append(" role=")
    head.append_text(plain(doc.get("role")))
    head.append(" incarnation=")
    head.append_text(plain(doc.get("incarnation")))
    head.append(" mqtt=")
    head.append("connected" if mqtt.get("connected") else "disconnected",
                style=None if mqtt.get("connected") else "red")
    head.append(f" tasks running={tasks.get('running', '-')} queued={tasks.get('queued', '-')}"
                f" slots={tasks.get('slots', '-')}")
    if sched.get("policy"):
        head.append(" policy=")
        head.append_text(plain(sched.get("policy")))
    console.print(head)

    console.print(_table(
        "neighbours", ("node", "role", "status", "seen s ago", "run/queue/slots",
                       "wait s", "cpu", "battery"),
        ([n.get("node_id"), n.get("role"), _styled(n.get("status")), n.get("last_seen_s"),
          "/".join(str(plain(n.get(k))) for k in ("running", "queued", "slots")),
          n.get("est_wait_s"), n.get("cpu_util"), n.get("battery")]
         for n in doc.get("neighbours") or [])))

    links = sched.get("links") or {}
    if links:
        console.print(_table(
            "links (estimated)", ("to", "rtt ms", "± ms", "Mbit/s"),
            ([name, _ms(link.get("rtt_s")), _ms(link.get("rtt_std_s")),
              _mbit(link.get("bandwidth_bps"))] for name, link in sorted(links.items()))))
    probe = sched.get("uplink_probe")
    if isinstance(probe, dict) and (probe.get("degraded") or probe.get("probes")):
        def shown(key: str) -> str:
            return plain(probe.get(key)).plain

        state = "degraded: probed" if probe.get("degraded") else "healthy"
        latest = ("" if probe.get("last") is None
                  else f", last {shown('last')} {shown('last_age_s')} s ago")
        console.print(Text(f"cloud uplink {state} (every {shown('interval_s')} s; "
                           f"{shown('probes')} probes, {shown('failed')} failed{latest})",
                           style="yellow" if probe.get("degraded") else "dim"))

    devices = doc.get("devices") or []
    console.print(_table(
        f"devices ({doc.get('devices_total', len(devices))})", ("device", "last seen s", "values"),
        ([d.get("device_id"), d.get("last_seen_s"),
          ", ".join(f"{k}={plain(v)}" for k, v in sorted((d.get("values") or {}).items()))]
         for d in devices[:MAX_DEVICES])))

    decisions = list(sched.get("decisions") or [])[-MAX_DECISIONS:]
    if not decisions and doc.get("role") == "edge":
        console.print(Text("no decision yet (no task submitted here)", style="dim"))
    if decisions:
        console.print(_table(
            "recent decisions (newest first; `edgesched status --task ID` for one)",
            ("task", "type", "age s", "chosen", "status", "predicted s", "actual s",
             "candidates: score (why not)"),
            ([d.get("id"), d.get("type"), d.get("age_s"), d.get("chosen"),
              _styled(d.get("status") or "running"), d.get("predicted_s"), d.get("actual_s"),
              _candidates_line(d.get("candidates") or [])]
             for d in reversed(decisions))))
    recent = doc.get("recent_tasks")
    if isinstance(recent, Mapping) and recent.get("tasks") is not None:
        last = [t for t in recent.get("last") or [] if isinstance(t, Mapping)]
        if last:
            console.print(_table(
                "recent tasks (newest first)",
                ("task", "type", "finished s ago", "outcome", "placement", "executed by",
                 "latency s"),
                ([t.get("id"), t.get("type"), t.get("age_s"), _styled(t.get("outcome")),
                  t.get("placement"), t.get("executed_by"), t.get("latency_s")]
                 for t in last[:MAX_DECISIONS])))
        console.print(Text(f"{recent.get('tasks')} finished task(s) kept for lookup "
                           f"({recent.get('bytes')} of {recent.get('max_bytes')} bytes)",
                           style="dim"))


def _candidates_line(candidates: Iterable[Mapping[str, Any]]) -> str:
    parts = []
    for c in candidates:
        why = f" ({c.get('reason')})" if c.get("reason") else ""
        parts.append(f"{c.get('node_id')}: {plain(c.get('score'))}{why}")
    return "; ".join(parts)


def _ms(seconds: Any) -> Any:
    return seconds * 1000.0 if isinstance(seconds, (int, float)) else None


def _mbit(bps: Any) -> Any:
    return bps / 1e6 if isinstance(bps, (int, float)) else None


def render_task(doc: Mapping[str, Any], console: Console | None = None) -> None:
    """One task's record: outcome, the decision and why, every candidate, every attempt."""
    console = console or Console()
    decision = doc.get("decision") or {}
    summary = Table(show_header=False, title=None, box=None)
    summary.add_column(style="dim")
    summary.add_column()
    for label, value in (
            ("task", doc.get("id")), ("type", doc.get("type")),
            ("node", f"{doc.get('node_id')} ({doc.get('role')})"),
            ("outcome", doc.get("outcome")), ("error", doc.get("error")),
            ("placement", doc.get("placement")), ("executed by", doc.get("executed_by")),
            ("latency s", doc.get("latency_s")), ("deadline s", doc.get("deadline_s")),
            ("deadline missed", doc.get("deadline_missed")),
            ("policy", decision.get("policy")), ("chosen", decision.get("chosen")),
            ("score", decision.get("score")), ("why", decision.get("why"))):
        summary.add_row(Text(label), _styled(value))
    console.print(summary)
    chosen = decision.get("chosen")
    console.print(_table(
        "candidates" + (f" ({doc['candidates_total']} in all)" if doc.get("candidates_total")
                        else ""),
        ("node", "placement", "feasible", "score", "predicted s", "q s", "energy J",
         "queued", "rejected because"),
        ([Text("* ", style="bold").append_text(plain(c.get("node_id")))
          if c.get("node_id") == chosen else plain(c.get("node_id")),
          c.get("placement"), c.get("feasible"), c.get("score"), c.get("latency_mean_s"),
          c.get("latency_q_s"), c.get("energy_j"), c.get("queued"), c.get("reason")]
         for c in doc.get("candidates") or [])))
    console.print(_table(
        "attempts", ("#", "target", "placement", "result", "started after s", "took s",
                     "wait s", "exec s", "error"),
        ([i, a.get("target"), a.get("placement"), _styled(a.get("result")),
          a.get("started_after_s"), a.get("duration_s"), a.get("wait_s"), a.get("exec_s"),
          a.get("error")] for i, a in enumerate(doc.get("attempts") or [], start=1))))
