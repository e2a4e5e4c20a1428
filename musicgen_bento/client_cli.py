"""The command-line client: `musicgen-bento continue|generate|jobs|health` against a running server
(`--server`, or MUSICGEN_SERVER_URL), through the typed client (`api.client`), with a progress bar
on a terminal and plain lines elsewhere.

Exit statuses: 0 done; 1 the server failed (or a stream was cut short, or a job failed or was
canceled); 3 the server refused the request (its message and field are printed); 4 no server
answered; 130 interrupted (Ctrl-C), after canceling what the command started.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import struct
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial as partial_function
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from .api.client import AudioStream, MusicGenClient, MusicGenClientError
from .schemas import ContinueRequest, GenerateRequest, JobView

DEFAULT_SERVER = "http://localhost:3000"
EXIT_FAILED = 1
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130
# Fields the commands take in their own way (a positional source, short flags, uploaded files).
_OWN_FIELDS = {"audio_path", "continue_from", "melody_path", "prompt", "duration_s"}
# What a stream carries: one take, a WAV file, levelled as it is made (render.stream).
_STREAMABLE = {"takes": (1,), "output_format": ("wav",), "normalization": ("clip", "none")}


class CommandFailed(Exception):
    """The command could not do what it was asked; `status` is its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- flags ----------------------------------------------------------------------------------------


def _flag_options(annotation: Any) -> dict[str, Any]:
    """argparse options for a request field's type: choices for literals, a list for lists."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _flag_options(annotation)
    if typing.get_origin(annotation) is list:
        return {**_flag_options(typing.get_args(annotation)[0]), "nargs": "+"}
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return {"type": type(choices[0]), "choices": choices}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": annotation if annotation in (int, float) else str}


def _add_field_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """A flag per request field, named with dashes (`--cfg-coef`); unset flags are left to the server."""
    fields = parser.add_argument_group("request fields (docs/api.md)")
    for name, info in model.model_fields.items():
        if name in _OWN_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or "").replace("%", "%%")
        options = _flag_options(info.annotation)
        if "choices" not in options and options.get("action") is None:
            options["metavar"] = name.rsplit("_", 1)[-1].upper() if name.endswith("_s") else name.upper()
        fields.add_argument(flag, dest=f"field_{name}", default=argparse.SUPPRESS, help=help_text, **options)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the command line set."""
    return {name.removeprefix("field_"): value for name, value in vars(args).items() if name.startswith("field_")}


def add_client_commands(commands: Any) -> None:
    """`continue`, `generate`, `jobs` and `health` on the `musicgen-bento` command."""

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--server",
            default=os.environ.get("MUSICGEN_SERVER_URL", DEFAULT_SERVER),
            help="the server's URL (MUSICGEN_SERVER_URL; default %(default)s); MUSICGEN_API_KEY "
            "holds its key where it asks for one",
        )
        parser.add_argument("--json", action="store_true", help="print the answer as one JSON object, nothing else")
        parser.set_defaults(run=lambda args: _run(run, args))
        return parser

    proceed = command("continue", "Continue the music in an audio file; stream it into a file.", continue_file)
    proceed.add_argument("source", type=Path, help="the audio file to continue (wav, flac, ogg, mp3)")
    _add_generation_flags(proceed, "the new file (default: SOURCE's name with -continued)")
    _add_field_flags(proceed, ContinueRequest)

    generate = command("generate", "Generate music as a job (from text, a melody or a file to continue).", generate_job)
    _add_generation_flags(generate, "the file (default: musicgen-JOB_ID.FORMAT); takes get -take2 and so on")
    generate.add_argument("--melody", type=Path, help="a melody to follow (melody models)")
    generate.add_argument("--continue-from", type=Path, help="an audio file to continue")
    generate.add_argument("--no-wait", action="store_true", help="print the job's id and leave it running")
    _add_field_flags(generate, GenerateRequest)

    jobs = commands.add_parser("jobs", help="A job: show it, cancel it, download its audio.")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, help_text, run in (
        ("show", "Print a job's status, progress and result.", show_job),
        ("cancel", "Cancel a queued job, or stop a running one.", cancel_job),
        ("download", "Save a succeeded job's audio.", download_job),
    ):
        parser = job_commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("job_id")
        parser.add_argument("--server", default=os.environ.get("MUSICGEN_SERVER_URL", DEFAULT_SERVER))
        parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        if name == "download":
            parser.add_argument("-o", "--output", type=Path, help="where (default: musicgen-JOB_ID.FORMAT)")
            parser.add_argument("--take", type=int, default=0, help="which take (default 0)")
        parser.set_defaults(run=lambda args, run=run: _run(run, args))

    command("health", "Print whether the server is ready, and what it serves.", show_health)


def _add_generation_flags(parser: argparse.ArgumentParser, output_help: str) -> None:
    parser.add_argument("-p", "--prompt", default=argparse.SUPPRESS, help="the text prompt")
    parser.add_argument("-d", "--duration-s", type=float, default=argparse.SUPPRESS, help="seconds of new music")
    parser.add_argument("-o", "--output", type=Path, help=output_help)
    parser.add_argument("--upload", action="store_true", help="upload the files even where the server could read them")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    body = _fields(args)
    for name in ("prompt", "duration_s"):
        if name in vars(args):
            body[name] = getattr(args, name)
    return body


# -- running --------------------------------------------------------------------------------------


def _run(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a client command, turning what went wrong into a message and an exit status."""
    try:
        return run(args)
    except MusicGenClientError as error:
        # The server's message begins with the field at fault, where there is one.
        print(f"musicgen-bento: the server answered {error.status_code}: {error.message}", file=sys.stderr)
        return EXIT_REFUSED if 400 <= error.status_code < 500 else EXIT_FAILED
    except (httpx.ConnectError, httpx.ConnectTimeout):
        print(f"musicgen-bento: no server answers at {args.server} (start one, or give --server)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except httpx.HTTPError as error:
        print(f"musicgen-bento: the connection to {args.server} failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except CommandFailed as error:
        print(f"musicgen-bento: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("musicgen-bento: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _client(args: argparse.Namespace) -> MusicGenClient:
    return MusicGenClient(args.server, timeout_s=3600, api_key=os.environ.get("MUSICGEN_API_KEY") or None)


def _shares_disk(server: str) -> bool:
    """Whether the server runs on this machine, so a local path may be one it can read."""
    host = urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_path(client: MusicGenClient, args: argparse.Namespace, path: Path, field: str) -> str:
    """A path the server can read for `path`: the file itself on a server of this machine, or an upload."""
    if not path.is_file():
        raise CommandFailed(f"{field}: no file at {path}", EXIT_REFUSED)
    if args.upload or not _shares_disk(args.server):
        return client.upload(path).audio_path
    return str(path.resolve())


def _with_upload_on_refusal(
    client: MusicGenClient, args: argparse.Namespace, path: Path, field: str, call: Callable[[str], Any]
) -> Any:
    """`call` with the server's path for `path`; where the server cannot read the local one (other
    input roots, another filesystem), once more with an upload."""
    server_path = _server_path(client, args, path, field)
    try:
        return call(server_path)
    except MusicGenClientError as error:
        if args.upload or error.field != field or error.status_code not in (403, 404):
            raise
    return call(client.upload(path).audio_path)


def continue_file(args: argparse.Namespace) -> int:
    body = _request(args)
    with _client(args) as client:
        streamable = all(body.get(name, allowed[0]) in allowed for name, allowed in _STREAMABLE.items())
        if streamable:
            stream = _with_upload_on_refusal(
                client, args, args.source, "audio_path", lambda path: client.continue_stream(path, **body)
            )
            output = args.output or _free_name(args.source, "wav")
            _save_stream(stream, output, args.json)
            answer = {
                "output": str(output),
                "audio_path": stream.audio_path,
                "seed": stream.seed,
                "sample_rate": stream.sample_rate,
                "channels": stream.channels,
                "duration_s": stream.duration_s,
            }
            _report(args, answer, f"wrote {output} ({stream.duration_s:g} s, seed {stream.seed})")
            return 0
        # Several takes, another format or a level of the whole piece: as a job, whose takes download.
        job_body = {**body, "takes": body.get("takes", 1)}
        accepted = _with_upload_on_refusal(
            client, args, args.source, "continue_from", lambda path: client.submit(continue_from=path, **job_body)
        )
        return _follow_and_download(client, args, accepted.job_id, args.output, args.source)


def generate_job(args: argparse.Namespace) -> int:
    body = _request(args)
    with _client(args) as client:
        if args.melody is not None:
            body["melody_path"] = _server_path(client, args, args.melody, "melody_path")
        if args.continue_from is not None:
            body["continue_from"] = _server_path(client, args, args.continue_from, "continue_from")
        accepted = client.submit(**body)
        if args.no_wait:
            _report(args, accepted.model_dump(), accepted.job_id)
            return 0
        return _follow_and_download(client, args, accepted.job_id, args.output, None)


def _follow_and_download(
    client: MusicGenClient, args: argparse.Namespace, job_id: str, output: Path | None, source: Path | None
) -> int:
    """Follows a job to its end (Ctrl-C cancels it), then saves every take."""
    try:
        view = _follow(client, job_id, args.json)
    except KeyboardInterrupt:
        client.cancel(job_id)
        raise
    if view.status != "succeeded" or view.result is None:
        raise CommandFailed(f"job {job_id} {view.status}: {view.error or 'no result'}")
    extension = Path(view.result.audio_path).suffix.lstrip(".")
    saved = []
    for take in range(len(view.result.takes)):
        target = _take_name(output, take) if output else _free_name(source, extension, job_id, take)
        saved.append(str(_atomically(target, partial_function(client.download, job_id, take=take))))
    answer = {"job": json.loads(view.model_dump_json()), "outputs": saved}
    _report(args, answer, "\n".join(f"wrote {path}" for path in saved))
    return 0


def _follow(client: MusicGenClient, job_id: str, quiet: bool) -> JobView:
    """The job's events, shown as progress, until its result."""
    with _progress(quiet, "decoding steps", 1.0, "") as advance:
        for message in client.events(job_id):
            if message.event == "progress":
                advance(float(message.data["progress"]))
            elif message.event == "result":
                view = JobView.model_validate(message.data)
                if view.status == "succeeded":
                    advance(1.0)
                return view
    return client.wait(job_id)  # the stream broke off: poll to the end


def show_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.status(args.job_id)
    line = f"{view.job_id}: {view.status}, {view.progress:.0%}"
    if view.result is not None:
        line += f", {view.result.audio_path}"
    if view.error:
        line += f", {view.error}"
    _report(args, json.loads(view.model_dump_json()), line)
    return 0


def cancel_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.cancel(args.job_id)
    _report(args, json.loads(view.model_dump_json()), f"{view.job_id}: {view.status}")
    return 0


def download_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.status(args.job_id)
        if view.result is None:
            raise CommandFailed(f"job {args.job_id} is {view.status}: no audio to download")
        extension = Path(view.result.audio_path).suffix.lstrip(".")
        target = args.output or _free_name(None, extension, args.job_id, args.take)
        _atomically(target, partial_function(client.download, args.job_id, take=args.take))
    _report(args, {"output": str(target)}, f"wrote {target}")
    return 0


def show_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        health = client.health()
    line = f"{health.status}: {health.model} on {health.device}" + (f" ({health.detail})" if health.detail else "")
    _report(args, json.loads(health.model_dump_json()), line)
    return 0 if health.status != "error" else EXIT_FAILED


# -- files and output -----------------------------------------------------------------------------


def _free_name(source: Path | None, extension: str, job_id: str | None = None, take: int = 0) -> Path:
    """A new file in the current directory that overwrites nothing: SOURCE-continued, or the job's."""
    stem = f"{source.stem}-continued" if source is not None else f"musicgen-{job_id}"
    take_part = f"-take{take + 1}" if take else ""
    candidate = Path(f"{stem}{take_part}.{extension}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = Path(f"{stem}{take_part}-{number}.{extension}")
    return candidate


def _take_name(output: Path, take: int) -> Path:
    return output if take == 0 else output.with_name(f"{output.stem}-take{take + 1}{output.suffix}")


def _atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """Writes through a hidden partial file renamed into place: an interrupted write leaves nothing."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        write(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _save_stream(stream: AudioStream, output: Path, quiet: bool) -> None:
    """Writes the stream into `output` as it comes, with its progress in seconds of audio (read
    from its WAV header: where the samples start, and a frame's bytes)."""

    def write(partial: Path) -> None:
        start = head = b""
        frame_bytes = 0
        with stream, partial.open("wb") as handle, _progress(quiet, "audio", stream.duration_s, "s") as advance:
            for chunk in stream:
                handle.write(chunk)
                if not frame_bytes:
                    head += chunk
                    if b"data" in head and b"fmt " in head and len(head) >= head.index(b"data") + 8:
                        fmt = head.index(b"fmt ")
                        frame_bytes = struct.unpack("<H", head[fmt + 20 : fmt + 22])[0]  # the block align
                        start = head[: head.index(b"data") + 8]
                if frame_bytes:
                    advance((stream.received - len(start)) / (stream.sample_rate * frame_bytes))

    _atomically(output, write)


@contextmanager
def _progress(quiet: bool, what: str, total: float, unit: str) -> Iterator[Callable[[float], None]]:
    """A progress bar on a terminal (rich), plain lines every tenth elsewhere, nothing with --json;
    yields the function that reports how far it is (of `total`)."""
    if quiet:
        yield lambda done: None
        return
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} " + unit if unit else "{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        started = time.monotonic()
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(what, total=total, rate="")

            def advance(done: float) -> None:
                elapsed = max(time.monotonic() - started, 1e-6)
                rate = f"{done / elapsed:.2f} {unit}/s" if unit else ""
                bar.update(task, completed=min(done, total), rate=rate)

            yield advance
        return
    reported = [-1]

    def line(done: float) -> None:
        tenth = int(10 * min(done, total) / total) if total else 10
        if tenth > reported[0]:
            reported[0] = tenth
            amount = f"{min(done, total):.1f}/{total:g} {unit}" if unit else f"{tenth * 10}%"
            print(f"{what}: {amount}", file=sys.stderr, flush=True)

    yield line


def _report(args: argparse.Namespace, answer: dict[str, Any], text: str) -> None:
    print(json.dumps(answer) if args.json else text, flush=True)
