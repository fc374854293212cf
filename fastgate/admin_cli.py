"""`fastgate admin [--socket PATH | -c CONFIG] [--json] GROUP VERB [ARGS]`: the admin socket from a shell.

Each verb sends the admin-socket command of the same name (`sessions list` -> `sessions.list`).
By default answers are printed as readable tables; `--json` prints the command's result as JSON
(lists as arrays; `tail` and `export` one event per line) and exits 0, or prints the error object
on stderr and exits 1. `sessions verify` without `--json` exits 1 when the chain is broken.
The socket is `--socket`, else `admin.socket` of `-c CONFIG`, else `$FASTGATE_ADMIN_SOCKET`,
else `var/admin.sock`.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from fastgate.admin_client import AdminClient, AdminError
from fastgate.records import canonical

DEFAULT_SOCKET = "var/admin.sock"
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="admin socket path")
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help="read admin.socket from this config")

    p = _Parser(prog="fastgate admin", description="Talk to a running gateway's admin socket.")
    p.add_argument("--socket", help=f"admin socket path (default: from -c CONFIG, else {DEFAULT_SOCKET})")
    p.add_argument("-c", "--config", help="read admin.socket from this config file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer (default 30)")
    groups = p.add_subparsers(dest="group", required=True, metavar="GROUP", parser_class=_Parser)

    g = groups.add_parser("status", parents=[common], help="pid, uptime, store head and size")
    g.set_defaults(cmd="status")

    g = groups.add_parser("sessions", help="session records: list, show, tail, replay, verify, export")
    verbs = g.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    v = verbs.add_parser("list", parents=[common], help="newest sessions first")
    v.add_argument("--since", help="RFC 3339 time, or a duration ago such as 15m, 2h, 1d")
    v.add_argument("--subject")
    v.add_argument("--function")
    v.add_argument("--decision")
    v.add_argument("--limit", type=int, default=50)
    v.add_argument("--cursor", help="continue after this session id (the last id of the previous page)")
    v.set_defaults(cmd="sessions.list")
    v = verbs.add_parser("show", parents=[common], help="one session, merged")
    v.add_argument("id")
    v.set_defaults(cmd="sessions.show")
    v = verbs.add_parser("tail", parents=[common], help="follow new events (Ctrl-C stops)")
    v.add_argument("--from", dest="from_seq", type=int, help="start with this seq (default: only new events)")
    v.add_argument("--limit", type=int, help="stop after this many events")
    v.set_defaults(cmd="sessions.tail")
    v = verbs.add_parser("replay", parents=[common], help="a session's events with timings; --to re-sends")
    v.add_argument("id")
    v.add_argument("--to", help="re-send the recorded (masked) request to this base URL")
    v.set_defaults(cmd="sessions.replay")
    v = verbs.add_parser("verify", parents=[common], help="walk the hash chain; report the first break")
    v.add_argument("--export-dir", help="also check against this export directory (default: the gateway's)")
    v.add_argument("--no-export", action="store_true", help="check the store alone")
    v.set_defaults(cmd="sessions.verify")
    v = verbs.add_parser("export", parents=[common], help="write events to a new JSONL file")
    v.add_argument("--out", required=True, help="file to create (must not exist)")
    v.add_argument("--session", help="only this session's events")
    v.add_argument("--from", dest="from_seq", type=int)
    v.add_argument("--to", dest="to_seq", type=int)
    v.set_defaults(cmd="sessions.export")

    g = groups.add_parser("approvals", help="pending approvals: list, show, approve, deny")
    verbs = g.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    v = verbs.add_parser("list", parents=[common])
    v.set_defaults(cmd="approvals.list")
    v = verbs.add_parser("show", parents=[common])
    v.add_argument("id")
    v.set_defaults(cmd="approvals.show")
    v = verbs.add_parser("approve", parents=[common])
    v.add_argument("id")
    v.add_argument("--reviewer", required=True)
    v.add_argument("--comment")
    v.set_defaults(cmd="approvals.approve")
    v = verbs.add_parser("deny", parents=[common])
    v.add_argument("id")
    v.add_argument("--reviewer", required=True)
    v.add_argument("--reason")
    v.set_defaults(cmd="approvals.deny")

    g = groups.add_parser("config", help="config reload")
    verbs = g.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    v = verbs.add_parser("reload", parents=[common])
    v.set_defaults(cmd="config.reload")

    g = groups.add_parser("policy", help="policy explain")
    verbs = g.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    v = verbs.add_parser("explain", parents=[common], help="which rules match a call, and the decision")
    v.add_argument("--subject", required=True)
    v.add_argument("--groups", default="", help="comma-separated: G1,G2")
    v.add_argument("--function", required=True)
    v.add_argument("--args", dest="call_args", default="{}", help="the call's arguments as JSON")
    v.set_defaults(cmd="policy.explain")
    return p


def _command_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The socket command's `args` from the parsed verb (None values left out)."""
    cmd = ns.cmd
    if cmd == "sessions.list":
        out = {k: getattr(ns, k) for k in ("since", "subject", "function", "decision", "limit", "cursor")}
    elif cmd in ("sessions.show", "approvals.show"):
        out = {"id": ns.id}
    elif cmd == "sessions.tail":
        out = {"from_seq": ns.from_seq, "limit": ns.limit}
    elif cmd == "sessions.replay":
        out = {"id": ns.id, "to": ns.to}
    elif cmd == "sessions.verify":
        out = {"export_dir": os.path.abspath(ns.export_dir) if ns.export_dir else None}
        if ns.no_export:
            out["export"] = False
    elif cmd == "sessions.export":
        out = {"session": ns.session, "from_seq": ns.from_seq, "to_seq": ns.to_seq}
    elif cmd == "approvals.approve":
        out = {"id": ns.id, "reviewer": ns.reviewer, "comment": ns.comment}
    elif cmd == "approvals.deny":
        out = {"id": ns.id, "reviewer": ns.reviewer, "reason": ns.reason}
    elif cmd == "policy.explain":
        try:
            call_args = orjson.loads(ns.call_args)
        except orjson.JSONDecodeError as exc:
            raise _Usage(f"--args is not valid JSON: {exc}") from None
        out = {"subject": ns.subject, "groups": [g for g in ns.groups.split(",") if g],
               "function": ns.function, "args": call_args}
    else:
        out = {}
    return {k: v for k, v in out.items() if v is not None}


class _Usage(Exception):
    pass


def _socket_path(ns: argparse.Namespace) -> str:
    if ns.socket:
        return str(ns.socket)
    if ns.config:
        from fastgate.config import ConfigError, load_config
        try:
            return load_config(ns.config).admin.socket
        except ConfigError as exc:
            raise _Usage(f"{ns.config}: invalid configuration\n  " + "\n  ".join(exc.errors)) from None
        except OSError as exc:
            raise _Usage(f"{ns.config}: {exc.strerror or exc}") from None
    return os.environ.get("FASTGATE_ADMIN_SOCKET") or DEFAULT_SOCKET


def main(argv: list[str] | None = None) -> int:
    """Run one admin verb; returns the exit code (0 ok, 1 error answer or broken chain, 2 usage)."""
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    out, err = sys.stdout, sys.stderr
    try:
        path = _socket_path(ns)
        args = _command_args(ns)
        with AdminClient(path, timeout=ns.timeout) as client:
            if ns.cmd == "sessions.tail":
                return _tail(client, args, ns.json, out)
            if ns.cmd == "sessions.export":
                return _export(client, args, ns.out, ns.json, out)
            result = client.call(ns.cmd, args)
    except _Usage as exc:
        print(f"fastgate admin: {exc}", file=err)
        return EXIT_USAGE
    except AdminError as exc:
        if ns.json:
            err.write(orjson.dumps(exc.to_dict()).decode() + "\n")
        else:
            print(f"error ({exc.code}): {exc.message}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130
    if ns.json:
        out.write(orjson.dumps(result).decode() + "\n")
        return 0
    return RENDER.get(ns.cmd, _render_generic)(result, out)


# --------------------------------------------------------------------------- streaming verbs

def _tail(client: AdminClient, args: dict[str, Any], as_json: bool, out: TextIO) -> int:
    if not as_json:
        out.write(_row(_TAIL_COLS, _TAIL_HEAD) + "\n")
        out.flush()
    try:
        for kind, value in client.stream("sessions.tail", args, timeout=None):
            if kind == "result":
                break
            if as_json:
                out.write(canonical(value).decode() + "\n")
            else:
                out.write(_row(_TAIL_COLS, _tail_cells(value)) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    return 0


def _export(client: AdminClient, args: dict[str, Any], path: str, as_json: bool, out: TextIO) -> int:
    """Writes exactly the stored bytes, one event per line, into a file that must not exist yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise AdminError("bad_request", f"{path} exists; choose a new file") from None
    except OSError as exc:
        raise AdminError("bad_request", f"cannot create {path}: {exc.strerror or exc}") from None
    result: Any = None
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            for kind, value in client.stream("sessions.export", args, timeout=client.timeout):
                if kind == "result":
                    result = value
                    break
                f.write(canonical(value) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        ok = True
    finally:
        if not ok:
            os.unlink(path)  # a partial export would read as a complete one
    result = {**(result or {}), "out": os.path.abspath(path)}
    if as_json:
        out.write(orjson.dumps(result).decode() + "\n")
    else:
        span = f" (seq {result.get('first_seq')}..{result.get('last_seq')})" if result.get("events") else ""
        out.write(f"wrote {result.get('events', 0)} events{span} to {result['out']}\n")
    return 0


# --------------------------------------------------------------------------- tables

def _cell(value: Any, width: int = 48) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, (dict, list)):
        text = orjson.dumps(value).decode()
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _row(widths: list[int], cells: list[str]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def _table(headers: list[str], rows: list[list[Any]], out: TextIO) -> None:
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write(_row(widths, headers) + "\n")
    out.writelines(_row(widths, r) + "\n" for r in cells)


def _ms(timing: dict[str, Any] | None) -> Any:
    timing = timing or {}
    parts = [v for v in (timing.get("gateway"), timing.get("upstream")) if isinstance(v, (int, float))]
    return round(sum(parts), 2) if parts else None


def _render_sessions(result: list[dict[str, Any]], out: TextIO) -> int:
    if not result:
        out.write("no sessions\n")
        return 0
    rows = [[v.get("id"), v.get("ts"), (v.get("caller") or {}).get("subject"), v.get("function"),
             v.get("decision"), v.get("rule"), (v.get("response") or {}).get("status"), _ms(v.get("timing_ms"))]
            for v in result]
    _table(["ID", "TIME", "SUBJECT", "FUNCTION", "DECISION", "RULE", "STATUS", "MS"], rows, out)
    out.write(f"{len(result)} sessions; next page: --cursor {result[-1].get('id')}\n")
    return 0


def _json_block(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n           ")


def _render_show(v: dict[str, Any], out: TextIO) -> int:
    caller = v.get("caller") or {}
    req = v.get("request") or {}
    resp = v.get("response")
    timing = v.get("timing_ms") or {}
    lines = [("session", v.get("id")), ("time", v.get("ts")),
             ("caller", f"{caller.get('subject')} ({caller.get('auth')}) groups: "
                        f"{', '.join(caller.get('groups') or []) or '-'}" if caller else "-"),
             ("function", v.get("function") or "-"),
             ("decision", f"{v.get('decision')} (rule {v.get('rule') or '-'})")]
    approval = v.get("approval")
    if approval:
        lines.append(("approval", f"{approval.get('id')}: {approval.get('status')}"))
    lines.append(("request", f"{req.get('method', '-')} {req.get('path', '')}"
                             + (f"?{req['query']}" if req.get("query") else "")))
    if req.get("headers"):
        lines.append(("", f"headers {_json_block(req['headers'])}"))
    if req.get("body") is not None:
        note = " (truncated)" if req.get("truncated") else ""
        lines.append(("", f"body{note} {_json_block(req['body'])}"))
    if resp:
        lines.append(("response", f"{resp.get('status')}, {resp.get('bytes')} bytes"
                                  + (" (truncated)" if resp.get("truncated") else "")))
        if resp.get("body") is not None:
            lines.append(("", f"body {_json_block(resp['body'])}"))
    else:
        lines.append(("response", "- (no call.finished event)"))
    lines.append(("timing", ", ".join(
        f"{k} {timing[k]:g} ms" if isinstance(timing.get(k), (int, float)) else f"{k} -"
        for k in ("gateway", "upstream", "approval_wait"))))
    if v.get("error"):
        lines.append(("error", v["error"]))
    out.writelines(f"{key:<10} {text}\n" for key, text in lines)
    out.write("events\n")
    _table(["  SEQ", "TYPE", "TIME", "HASH"],
           [[f"  {e.get('seq')}", e.get("type"), e.get("ts"), (e.get("hash") or "")[:16]]
            for e in v.get("events") or []], out)
    return 0


def _render_verify(r: dict[str, Any], out: TextIO) -> int:
    if r.get("ok"):
        head = r.get("head") or {}
        out.write(f"chain ok: {r.get('events')} events, head seq {head.get('seq')} hash {head.get('hash')}\n")
        export = r.get("export")
        if export:
            out.write(f"export ok: {export.get('heads')} heads, last exported seq "
                      f"{export.get('last_exported_seq')} in {export.get('dir')}\n")
        return 0
    out.write(f"chain BROKEN at seq {r.get('seq')}: {r.get('reason')}\n")
    return 1


def _render_replay(r: dict[str, Any], out: TextIO) -> int:
    _table(["SEQ", "T_MS", "TYPE", "STATUS"],
           [[e.get("seq"), e.get("t_ms"), e.get("type"), e.get("status")] for e in r.get("events") or []], out)
    rep = r.get("replay")
    if rep:
        out.write(f"\nreplayed {rep.get('method')} {rep.get('url')}\n")
        if rep.get("error"):
            out.write(f"  failed: {rep['error']}\n")
        else:
            new = rep.get("new") or {}
            rec = rep.get("recorded") or {}
            out.write(f"  status   recorded {rec.get('status')}  now {new.get('status')}"
                      f"  ({'same' if rep.get('same_status') else 'DIFFERENT'})\n")
            out.write(f"  body     {'same' if rep.get('same_body') else 'DIFFERENT'}\n")
            if not rep.get("same_body"):
                out.write(f"  recorded {_cell(rec.get('body'), 200)}\n  now      {_cell(new.get('body'), 200)}\n")
    return 0


def _render_generic(result: Any, out: TextIO) -> int:
    if isinstance(result, list):
        if not result:
            out.write("(none)\n")
        elif all(isinstance(x, dict) for x in result):
            keys: list[str] = []
            for item in result:
                keys += [k for k in item if k not in keys]
            _table([k.upper() for k in keys], [[item.get(k) for k in keys] for item in result], out)
        else:
            for item in result:
                out.write(f"{_cell(item, 200)}\n")
    elif isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            text = _json_block(value) if isinstance(value, (dict, list)) else _cell(value, 200)
            out.write(f"{key:<{width}}  {text}\n")
    elif result is not None:
        out.write(f"{result}\n")
    return 0


_TAIL_HEAD = ["SEQ", "TIME", "TYPE", "SESSION", "FUNCTION", "DECISION", "STATUS"]
_TAIL_COLS = [8, 24, 18, 26, 18, 10, 6]


def _tail_cells(ev: dict[str, Any]) -> list[str]:
    status = ev.get("status")
    if status is None and isinstance(ev.get("response"), dict):
        status = ev["response"].get("status")
    return [_cell(ev.get(k), w) for k, w in zip(("seq", "ts", "type", "session", "function", "decision"),
                                                 _TAIL_COLS)] + [_cell(status)]


RENDER: dict[str, Callable[[Any, TextIO], int]] = {
    "sessions.list": _render_sessions,
    "sessions.show": _render_show,
    "sessions.verify": _render_verify,
    "sessions.replay": _render_replay,
}
