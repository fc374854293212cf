"""Command line: run, check, demo, status, config-schema.

Parsing is argparse; each command is a small function that returns the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_INVALID = 2


def _cmd_check(args: argparse.Namespace) -> int:
    from fastgate.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid configuration", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    from fastgate.policy import check_warnings

    print(f"{args.config}: ok ({len(config.functions)} functions, {len(config.upstreams)} upstreams, "
          f"{len(config.rules)} rules)")
    for warning in check_warnings(config):
        print(f"  warning: {warning}")
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from fastgate.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import fastgate
    from fastgate._core import CORES, IMPLEMENTATIONS, load

    for core in CORES:  # cores load on first use: load them all to say which one runs
        load(core)

    print(f"fastgate {fastgate.__version__}")
    for name, impl in sorted(IMPLEMENTATIONS.items()):
        note = "" if impl == "compiled" else "  (pure-Python reference: slower; build with Cython)"
        print(f"  core {name}: {impl}{note}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from fastgate.server import run

    return run(args.config, workers=args.workers, listen=args.listen)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fastgate.demo import run_demo

    return run_demo(listen=args.listen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from fastgate.keygen import keygen

    key, digest = keygen()
    print(f"key (give it to the service; it is not stored anywhere): {key}")
    print("config (identity.api_keys):")
    print(f"  - name: {args.name}")
    print(f'    sha256: "{digest}"')
    print(f"    groups: [{', '.join(args.groups.split(',')) if args.groups else ''}]")
    return 0


def _cmd_admin(args: argparse.Namespace) -> int:
    from fastgate.admin_cli import main as admin_main

    return admin_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="serve in the foreground (SIGTERM drains, SIGHUP reloads)")
    p.add_argument("-c", "--config", default="configs/example.yaml")
    p.add_argument("--workers", type=int, default=None, help="worker processes sharing the port")
    p.add_argument("--listen", default=None, help="HOST:PORT, overrides the config")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a config; exit 2 if invalid")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("demo", help="gateway + bundled demo functions, no set-up")
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("admin", help="talk to a running gateway's admin socket", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_admin)

    p = sub.add_parser("status", help="version and which compiled cores are loaded")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("keygen", help="a new random API key and the sha256 line for the config")
    p.add_argument("--name", default="service")
    p.add_argument("--groups", default="", help="comma-separated groups for the config line")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("config-schema", help="print the JSON Schema of the config file")
    p.set_defaults(func=_cmd_config_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:  # its own parser: options may come before the group and verb
        from fastgate.admin_cli import main as admin_main

        return admin_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
