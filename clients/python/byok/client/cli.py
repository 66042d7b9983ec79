"""`byok`: the command line client of a byok server.

    byok conversations ls | show | rm | search | export | import   (alias: byok conv)

Errors are one line on stderr, `byok: <what the server said>`, and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message as ProtoMessage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from byok.client.client import (
    ALL_CONVERSATIONS,
    DEFAULT_TARGET,
    ENV_TARGET,
    Client,
    chat_request,
    conversation_id,
    conversation_name,
)
from byok.client.errors import ByokError
from byok.client.workspace_cli import register as register_workspace
from byok.v1 import conversations_pb2

START_HINT = "is it running? start it with: make run"

app = typer.Typer(
    name="byok",
    help="byok: your conversations with any model, on your own keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
conversations_app = typer.Typer(
    help="Conversations (context threads): list, show, search, delete, export, import.",
    no_args_is_help=True,
)
app.add_typer(conversations_app, name="conversations")
app.add_typer(conversations_app, name="conv", hidden=True)
register_workspace(app)  # byok models|profiles|spaces

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine output: JSON on stdout.")]
Target = Annotated[str, typer.Argument(help="Conversation id or name (conversations/<id>).")]


# -- global options, connection, errors ---------------------------------------------------


@dataclass
class State:
    server: str | None = None
    json: bool = False
    timeout: float = 30.0


@app.callback()
def _global_options(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help=f"byok gRPC address host:port [env {ENV_TARGET}, else {DEFAULT_TARGET}]",
            show_default=False,
        ),
    ] = None,
    json_output: JsonFlag = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for each call.", min=0.1)
    ] = 30.0,
) -> None:
    ctx.obj = State(server=server, json=json_output, timeout=timeout)


def cli_state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, State) else State()


def fail(message: str, details: list[str] | None = None) -> NoReturn:
    err = _stderr()
    err.print(Text(f"byok: {message}"))
    for line in details or []:
        err.print(Text(f"  {line}"))
    raise typer.Exit(1)


def fail_for_error(error: ByokError, target: str) -> NoReturn:
    if error.unreachable:
        fail(f"cannot reach the byok server at {target} ({START_HINT})")
    details = [str(v) for v in error.field_violations if str(v) != error.message]
    fail(error.message or error.code, details)


@contextlib.contextmanager
def connect(ctx: typer.Context) -> Iterator[Client]:
    """A client for the command; any ByokError inside becomes `byok: ...` and exit 1."""
    state = cli_state(ctx)
    client = Client(state.server, timeout=state.timeout)
    try:
        yield client
    except ByokError as error:
        fail_for_error(error, client.target)
    finally:
        client.close()


# -- output helpers --------------------------------------------------------------------


def _stdout() -> Console:
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal:  # no wrapping or truncation when piped
        console = Console(highlight=False, markup=False, emoji=False, width=4096)
    return console


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _as_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or cli_state(ctx).json


def _print_table(out: Console, table: Table) -> None:
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:  # piped: the plain table without trailing padding
        out.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left in stdout's buffer nowhere, silently."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _to_dict(message: ProtoMessage) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _local_time(ts: timestamp_pb2.Timestamp, *, short: bool = False) -> str:
    """Local time; `short`: "Nov 22 14:05" this year, "2025-11-22" before."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    when = ts.ToDatetime(tzinfo=UTC).astimezone()
    if not short:
        return when.strftime("%Y-%m-%d %H:%M")
    if when.year == datetime.now().astimezone().year:
        return when.strftime("%b %d %H:%M")
    return when.strftime("%Y-%m-%d")


def _role(role: conversations_pb2.Role.ValueType) -> str:
    try:
        return conversations_pb2.Role.Name(role).removeprefix("ROLE_").lower()
    except ValueError:
        return f"role {int(role)}"


ROLE_STYLES = {"user": "bold cyan", "assistant": "bold green", "system": "bold magenta"}


def _title(conv_title: str) -> Text:
    return Text(conv_title) if conv_title else Text("(untitled)", style="dim")


def _marked(snippet: str, terminal: bool) -> Text:
    """The snippet with its [matches] in bold on a terminal; as sent otherwise."""
    if not terminal:
        return Text(snippet)
    text = Text()
    rest = snippet
    while True:
        start = rest.find("[")
        end = rest.find("]", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            text.append(rest)
            return text
        text.append(rest[:start])
        text.append(rest[start + 1 : end], style="bold")
        rest = rest[end + 1 :]


# -- conversations ---------------------------------------------------------------------


@conversations_app.command("ls")
def ls(
    ctx: typer.Context,
    filter_: Annotated[
        str,
        typer.Option(
            "--filter",
            help="AIP-160 filter, e.g. 'pinned = true AND update_time > \"2026-01-01T00:00:00Z\"'",
        ),
    ] = "",
    order_by: Annotated[
        str,
        typer.Option(
            "--order-by", help='"update_time desc" (default), "update_time", "create_time [desc]"'
        ),
    ] = "",
    limit: Annotated[int, typer.Option("--limit", help="At most N; 0 for all.", min=0)] = 50,
    archived: Annotated[
        bool, typer.Option("--archived", help="List archived conversations instead.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """List conversations, most recently updated first."""
    if archived and "archived" not in filter_:
        filter_ = f"archived = true AND ({filter_})" if filter_ else "archived = true"
    page_size = min(limit + 1, 1000) if limit else 1000
    with connect(ctx) as client:
        rows: list[conversations_pb2.Conversation] = []
        more = False
        for conv in client.list_conversations(filter_, order_by, page_size):
            if limit and len(rows) == limit:
                more = True
                break
            rows.append(conv)
    if _as_json(ctx, json_flag):
        _print_json([_to_dict(c) for c in rows])
        return
    out = _stdout()
    if not rows:
        _stderr().print("no conversations" + (" match" if filter_ else ""))
        return
    with_model = out.width >= 100  # a narrow terminal keeps the title readable instead
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold" if out.is_terminal else "")
    table.add_column("ID", no_wrap=True, style="dim" if out.is_terminal else None)
    table.add_column("TITLE", overflow="fold", min_width=16)
    table.add_column("MESSAGES", justify="right")
    if with_model:
        table.add_column("LAST MODEL", overflow="fold")
    table.add_column("UPDATED", no_wrap=True)
    for conv in rows:
        title = _title(conv.title)
        if conv.pinned:
            title.append(" (pinned)", style="yellow")
        if conv.archived:
            title.append(" (archived)", style="dim")
        model = [conv.last_model] if with_model else []
        updated = _local_time(conv.update_time, short=True)
        table.add_row(conversation_id(conv.name), title, str(conv.message_count), *model, updated)
    _print_table(out, table)
    if more:
        _stderr().print(f"showing the first {limit}; --limit 0 lists all")


@conversations_app.command("show")
def show(ctx: typer.Context, conversation: Target, json_flag: JsonFlag = False) -> None:
    """Show a conversation and its messages."""
    with connect(ctx) as client:
        conv = client.get_conversation(conversation, full=False)
        conv.messages.extend(client.list_messages(conv.name, page_size=1000))
    if _as_json(ctx, json_flag):
        _print_json(_to_dict(conv))
        return
    out = _stdout()
    out.print(Text.assemble(_title(conv.title), style="bold"))
    facts = [conv.name, f"{conv.message_count} messages"]
    if conv.last_model:
        facts.append(f"model {conv.last_model}")
    if conv.usage.total_tokens:
        facts.append(
            f"{conv.usage.total_tokens} tokens "
            f"({conv.usage.prompt_tokens} in, {conv.usage.completion_tokens} out)"
        )
    if conv.space:
        facts.append(conv.space)
    facts.append(f"updated {_local_time(conv.update_time)}")
    out.print(Text(" · ".join(facts), style="dim"))
    for message in conv.messages:
        role = _role(message.role)
        head = Text(role, style=ROLE_STYLES.get(role, "bold"))
        if message.model:
            head.append(f" · {message.model}", style="dim")
        if message.status == conversations_pb2.MESSAGE_STATUS_INCOMPLETE:
            reason = f": {message.incomplete_reason}" if message.incomplete_reason else ""
            head.append(f" [INCOMPLETE{reason}]", style="bold red")
        out.print()
        out.print(head)
        out.print(Text(message.content))


@conversations_app.command("rm")
def rm(
    ctx: typer.Context,
    conversations: Annotated[
        list[str], typer.Argument(help="Conversation ids or names.", show_default=False)
    ],
    force: Annotated[bool, typer.Option("--force", help="Delete pinned ones too.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
) -> None:
    """Delete conversations with their messages."""
    with connect(ctx) as client:
        for target in conversations:
            name = conversation_name(target)
            if not yes:
                if not sys.stdin.isatty():
                    fail(f"not deleting {name} without confirmation; pass --yes")
                conv = client.get_conversation(name, full=False)
                title = conv.title or "(untitled)"
                if not typer.confirm(
                    f"delete {name} “{title}” with {conv.message_count} messages?"
                ):
                    fail(f"{name} not deleted")
            client.delete_conversation(name, force=force)
            typer.echo(f"deleted {name}")


@conversations_app.command("search")
def search(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(help='Words (all must match), "phrases", prefix*, OR, NOT.')
    ],
    within: Annotated[
        str | None, typer.Option("--in", help="Search only this conversation.")
    ] = None,
    filter_: Annotated[
        str,
        typer.Option(
            "--filter", help='AIP-160 filter: role = ROLE_USER, space = "spaces/x", create_time'
        ),
    ] = "",
    order_by: Annotated[
        str, typer.Option("--order-by", help='"relevance" (default) or "create_time desc"')
    ] = "",
    limit: Annotated[int, typer.Option("--limit", help="At most N hits.", min=1)] = 20,
    json_flag: JsonFlag = False,
) -> None:
    """Full-text search over messages and titles."""
    parent = conversation_name(within) if within else ALL_CONVERSATIONS
    with connect(ctx) as client:
        hits = list(client.search(query, parent, filter=filter_, order_by=order_by, limit=limit))
    if _as_json(ctx, json_flag):
        _print_json([_to_dict(h) for h in hits])
        return
    if not hits:
        _stderr().print("no matches")
        return
    out = _stdout()
    for i, hit in enumerate(hits):
        if i:
            out.print()
        out.print(
            Text.assemble(
                Text(hit.conversation_title or "(untitled)", style="bold"),
                "  ",
                Text(hit.conversation, style="dim"),
            )
        )
        role = _role(hit.message.role)
        when = _local_time(hit.message.create_time)
        out.print(Text.assemble("  ", Text(role, style=ROLE_STYLES.get(role, "")), f" · {when}"))
        out.print(Text.assemble("  ", _marked(hit.snippet, out.is_terminal)))


@conversations_app.command("export")
def export(
    ctx: typer.Context,
    conversations: Annotated[
        list[str] | None,
        typer.Argument(help="Conversation ids or names; none for every conversation."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE (default: stdout).")
    ] = None,
) -> None:
    """Export conversations as the byok JSON document (docs/export-format.md)."""
    err = _stderr()
    partial = output.with_name(output.name + ".partial") if output else None
    with connect(ctx) as client:
        stream = client.export(conversations or [])
        try:
            with contextlib.ExitStack() as stack:
                sink = stack.enter_context(partial.open("wb")) if partial else sys.stdout.buffer
                status = stack.enter_context(err.status("exporting…")) if err.is_terminal else None
                done = 0  # the header slice, one slice per conversation, then "]}"
                for chunk in stream:
                    sink.write(chunk)
                    if status is not None:
                        if stream.slices_received > 1 and chunk.strip() != b"]}":
                            done += 1
                        mib = stream.bytes_received / (1024 * 1024)
                        status.update(f"exporting… {done} conversations, {mib:.1f} MiB")
                sink.flush()
        except BrokenPipeError:  # `byok conv export | head`: the reader has had enough
            stream.cancel()
            _quiet_stdout()
            raise typer.Exit(1) from None
        except OSError as exc:
            stream.cancel()
            if partial:
                partial.unlink(missing_ok=True)
            fail(f"cannot write {output or 'stdout'}: {exc.strerror or exc}")
        except BaseException:
            if partial:
                partial.unlink(missing_ok=True)
            raise
    if partial and output:
        partial.replace(output)
    summary = stream.summary
    if summary is None:
        fail("the export ended without its summary; the document may be incomplete")
    err.print(
        f"exported {summary.conversation_count} conversations, {summary.message_count} messages"
    )


@conversations_app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="A byok export or ChatGPT's conversations.json; - for stdin.")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="auto, byok or chatgpt.", case_sensitive=False)
    ] = "auto",
    space: Annotated[
        str, typer.Option("--space", help="Put the conversations in this space (spaces/x).")
    ] = "",
    json_flag: JsonFlag = False,
) -> None:
    """Import conversations; importing the same file twice creates no duplicates."""
    fmt = fmt.lower()
    if fmt not in ("auto", "byok", "chatgpt"):
        fail(f"--format must be auto, byok or chatgpt, not {fmt!r}")
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    with connect(ctx) as client:
        result = client.import_conversations(data, fmt, space)
    if _as_json(ctx, json_flag):
        _print_json(_to_dict(result))
    else:
        typer.echo(
            f"created {result.created_count}, skipped {result.skipped_count}, "
            f"failed {result.failed_count}"
        )
        for failure in result.failures:
            source = f" ({failure.source_id})" if failure.source_id else ""
            typer.echo(f"  #{failure.index}{source}: {failure.reason}")
    if result.failed_count:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `byok conv ls --json | head`
        _quiet_stdout()
        sys.exit(1)


# -- chat ------------------------------------------------------------------------------


@app.command("chat")
def chat_command(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help="Your message; '-' reads it from stdin.")],
    conversation: Annotated[
        str | None,
        typer.Option("-c", "--conversation", help="Continue this conversation (id or name)."),
    ] = None,
    model: Annotated[
        str, typer.Option("-m", "--model", help="Route key (MODEL_ROUTE_<KEY>).")
    ] = "",
    profile: Annotated[str, typer.Option("--profile", help="Model profile (id or name).")] = "",
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0, max=2)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Send a message and stream the reply as it arrives; prints the conversation's name."""
    text = sys.stdin.read() if message == "-" else message
    request = chat_request(
        text,
        conversation=conversation,
        model_key=model,
        model_profile=(
            profile
            if not profile or profile.startswith("modelProfiles/")
            else f"modelProfiles/{profile}"
        ),
        system_prompt=system,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    as_json = _as_json(ctx, json_flag)
    out = sys.stdout
    name = ""
    with connect(ctx) as client:
        for event in client.stream_chat(request):
            kind = event.WhichOneof("event")
            if as_json:  # one JSON object per event, flushed: scripts read it live
                out.write(json.dumps(json_format.MessageToDict(event)) + "\n")
                out.flush()
                continue
            if kind == "started":
                name = event.started.conversation
            elif kind == "delta":
                out.write(event.delta.text)
                out.flush()  # every delta as it arrives, also into a pipe
            elif kind == "done":
                out.write("\n")
                out.flush()
    if not as_json:
        _stderr().print(Text(name))
