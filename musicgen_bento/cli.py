"""The command line: `musicgen-bento serve|models|keys|settings`, also run as `python -m
musicgen_bento`, and the client commands (`continue`, `generate`, `jobs`, `health`: `client_cli`).

`serve` turns its flags into the service's environment variables and hands over to
`bentoml serve`, so the node orchestrator's command line and `bentoml serve` configure
exactly the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .access.keys import KeysFile
from .client_cli import add_client_commands
from .errors import InvalidParameter, MusicGenError
from .settings import Settings, SettingsError, setting_specs, settings_table

SERVICE = "service:MusicGen"


def project_root() -> Path:
    """The directory holding `service.py` next to this package (a checkout or a built bento)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "service.py").is_file():
        raise SystemExit(f"service.py not found next to the musicgen_bento package in {root}")
    return root


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    for spec in setting_specs():
        if spec["flag"] is None:
            continue
        help_text = f"{spec['help']} [env {spec['env']}]"
        if spec["is_bool"]:
            parser.add_argument(
                spec["flag"], dest=spec["name"], action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(spec["flag"], dest=spec["name"], default=None, metavar=spec["env"], help=help_text)


def serve_environment(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The server's environment: `base` with every flag given on the command line applied."""
    env = dict(base)
    for spec in setting_specs():
        value = getattr(args, spec["name"], None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        env[spec["env"]] = str(value)
    return env


def serve(args: argparse.Namespace) -> int:
    env = serve_environment(args, dict(os.environ))
    try:
        settings = Settings.from_env(env)
    except SettingsError as error:
        print(f"musicgen-bento: {error}", file=sys.stderr)
        return 2
    bentoml_cli = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    command = [
        bentoml_cli,
        "serve",
        SERVICE,
        "--working-dir",
        str(project_root()),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
    ]
    os.execvpe(command[0], command, env)
    return 0  # not reached: exec replaces this process


def models_import(args: argparse.Namespace) -> int:
    from .models.store import import_model

    info = import_model(args.source, name=args.name, progress=lambda line: print(line, file=sys.stderr))
    print(
        f"imported {info.source} as {info.tag} "
        f"({info.kind}, {info.sample_rate} Hz, {info.channels} ch, licence {info.licence})"
    )
    return 0


def models_create_tiny(args: argparse.Namespace) -> int:
    from .models.store import create_tiny
    from .models.tiny import TINY_NAMES

    kinds = list(TINY_NAMES) if args.kind == "all" else [args.kind]
    for kind in kinds:
        info = create_tiny(kind)
        print(f"created {info.tag} ({info.kind}; random weights: noise, not music)")
    return 0


def models_list(args: argparse.Namespace) -> int:
    from .models.store import list_models

    found = list_models()
    if not found:
        print("no MusicGen models in the store; `musicgen-bento models import` or `models create-tiny` adds some")
        return 0
    columns = [("TAG", "<50"), ("KIND", "<7"), ("RATE", ">6"), ("CH", ">3"), ("LICENCE", "<20"), ("SOURCE", "")]
    _print_table(columns, [(i.tag, i.kind, i.sample_rate, i.channels, i.licence[:20], i.source) for i in found])
    return 0


def _print_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]) -> None:
    """Rows under their headings; each column is (heading, format spec: '<50', '>6')."""
    for row in [[heading for heading, _ in columns], *rows]:
        print(" ".join(f"{value!s:{spec}}" for value, (_, spec) in zip(row, columns, strict=True)).rstrip())


def _keys_file(args: argparse.Namespace) -> KeysFile:
    """The keys file `--api-keys-file` names, or MUSICGEN_API_KEYS_FILE."""
    path = Path(args.api_keys_file) if args.api_keys_file else Settings.from_env().api_keys_file
    if path is None:
        raise InvalidParameter(
            "name the keys file with --api-keys-file or MUSICGEN_API_KEYS_FILE (the server reads the same one)",
            field="api_keys_file",
        )
    return KeysFile(path.expanduser().resolve())


def keys_add(args: argparse.Namespace) -> int:
    keys = _keys_file(args)
    secret = keys.add(args.name, args.max_running, args.max_queued, args.audio_s_per_hour)
    print(f"added key {args.name!r} to {keys.path}; its secret follows, shown this once (only its hash is kept):")
    print(secret)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    keys = _keys_file(args)
    found = keys.keys()
    if not found:
        print(f"no keys in {keys.path}; `musicgen-bento keys add NAME` makes one")
        return 0

    def limit(value: float | None) -> str:
        return "default" if value is None else "none" if value == 0 else f"{value:g}"

    columns = [
        ("NAME", "<24"),
        ("CREATED", "<26"),
        ("MAX RUNNING", ">11"),
        ("MAX QUEUED", ">10"),
        ("AUDIO S/HOUR", ">12"),
    ]
    rows = [(k.name, k.created_at, limit(k.max_running), limit(k.max_queued), limit(k.audio_s_per_hour)) for k in found]
    _print_table(columns, rows)
    return 0


def keys_remove(args: argparse.Namespace) -> int:
    keys = _keys_file(args)
    keys.remove(args.name)
    print(f"removed key {args.name!r} from {keys.path}; a running server refuses it from its next request")
    return 0


def _add_keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="Manage the API keys a server asks for (MUSICGEN_API_KEYS_FILE).")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = key_commands.add_parser(name, help=help_text)
        parser.add_argument("--api-keys-file", help="the keys file (default: MUSICGEN_API_KEYS_FILE)")
        parser.set_defaults(run=run)
        return parser

    adder = command("add", "Create a key; prints its secret once, as the last line.", keys_add)
    adder.add_argument("name", help="what logs and metrics call the key (letters, digits, '.', '_', '-')")
    adder.add_argument("--max-running", type=_count, help="generations at once (0: no limit; default: the server's)")
    adder.add_argument("--max-queued", type=_count, help="jobs queued (0: no limit; default: the server's)")
    adder.add_argument(
        "--audio-s-per-hour", type=_seconds, help="seconds of audio an hour (0: no limit; default: the server's)"
    )
    command("list", "List the keys (names and limits; never secrets).", keys_list)
    remover = command("remove", "Remove a key; a running server refuses it from its next request.", keys_remove)
    remover.add_argument("name")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a whole number of 0 or more (0: no limit); got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds, 0 or more (0: no limit); got {text!r}")
    return value


def print_settings(args: argparse.Namespace) -> int:
    print(settings_table(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-bento", description="Serve Meta's MusicGen over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="Start the HTTP service (the default command).")
    _add_serve_flags(serve_parser)
    serve_parser.set_defaults(run=serve)

    models = commands.add_parser("models", help="Manage MusicGen checkpoints in the BentoML model store.")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    importer = model_commands.add_parser("import", help="Import a hub id or a local transformers checkpoint.")
    importer.add_argument("source", help="hub id (facebook/musicgen-melody) or local checkpoint directory")
    importer.add_argument("--name", help="store name (default: the hub id with '/' as '--', or the directory name)")
    importer.set_defaults(run=models_import)
    tiny = model_commands.add_parser("create-tiny", help="Build tiny random-weight models for tests and offline runs.")
    tiny.add_argument("--kind", choices=["text", "melody", "stereo", "all"], default="all")
    tiny.set_defaults(run=models_create_tiny)
    lister = model_commands.add_parser("list", help="List the MusicGen models in the store.")
    lister.set_defaults(run=models_list)
    _add_keys_commands(commands)
    add_client_commands(commands)
    settings = commands.add_parser("settings", help="Print every setting: variable, flag, default and meaning.")
    settings.set_defaults(run=print_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The orchestrator runs `python -m musicgen_bento --model ... --port ...`: no command means serve.
    if not argv or (argv[0].startswith("-") and argv[0] not in {"-h", "--help"}):
        argv = ["serve", *argv]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the client's output
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except MusicGenError as error:
        print(f"musicgen-bento: {error.message}", file=sys.stderr)
        return 1
