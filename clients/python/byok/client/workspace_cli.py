"""`byok models`, `byok profiles` and `byok spaces`: routes, model profiles, spaces.

    byok models ls | show
    byok profiles ls | create | show | update | rm
    byok spaces ls | create | show | update | rm | link | unlink

`register(app)` adds them to the `byok` app. The shared helpers (global options,
errors as `byok: ...`, table and JSON output) come from `byok.client.cli`, imported
when a command runs so the two modules do not import each other at load time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2
from rich.table import Table
from rich.text import Text

from byok.client.errors import ByokError
from byok.client.workspace import WorkspaceClient, generation_params, profile_name, space_name
from byok.v1 import models_pb2, spaces_pb2

models_app = typer.Typer(help="Model routes: what is configured, allowed, and how it does.")
profiles_app = typer.Typer(
    help="Model profiles: named presets (a route and default parameters).", no_args_is_help=True
)
spaces_app = typer.Typer(
    help="Spaces: group conversations and model profiles.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine output: JSON on stdout.")]
ProfileArg = Annotated[str, typer.Argument(help="Profile id or name (modelProfiles/<id>).")]
SpaceArg = Annotated[str, typer.Argument(help="Space id or name (spaces/<id>).")]
System = Annotated[str | None, typer.Option("--system", help="System prompt.")]
Temperature = Annotated[float | None, typer.Option("--temperature", min=0, max=2)]
TopP = Annotated[float | None, typer.Option("--top-p", min=0, max=1)]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", min=1)]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="A stop sequence (up to 4).")]


keys_app = typer.Typer(
    help="Your own provider keys (bring your own key): set, list, remove.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Adds the three command groups to `app` (once)."""
    present = {group.name for group in app.registered_groups}
    groups = (
        ("models", models_app),
        ("profiles", profiles_app),
        ("spaces", spaces_app),
        ("keys", keys_app),
    )
    for name, sub in groups:
        if name not in present:
            app.add_typer(sub, name=name)


# -- helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def connect(ctx: typer.Context) -> Iterator[WorkspaceClient]:
    """Like `byok.client.cli.connect`, with the workspace methods."""
    from byok.client import cli

    state = cli.cli_state(ctx)
    client = WorkspaceClient(state.server, timeout=state.timeout)
    try:
        yield client
    except ByokError as error:
        cli.fail_for_error(error, client.target)
    finally:
        client.close()


def _json(ctx: typer.Context, flag: bool, value: Any) -> bool:
    """Prints `value` (messages or lists of them) as JSON when asked; True if it did."""
    from byok.client import cli

    if not cli._as_json(ctx, flag):
        return False
    if isinstance(value, list):
        cli._print_json([cli._to_dict(v) for v in value])
    else:
        cli._print_json(cli._to_dict(value))
    return True


def _table(*columns: str) -> Table:
    from byok.client import cli

    out = cli._stdout()
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold" if out.is_terminal else "")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _print(table: Table) -> None:
    from byok.client import cli

    cli._print_table(cli._stdout(), table)


def _note(message: str) -> None:
    from byok.client import cli

    cli._stderr().print(Text(message))


def _seconds(d: duration_pb2.Duration) -> str:
    if not d.seconds and not d.nanos:
        return "-"
    value = d.ToMicroseconds() / 1e6
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _tokens(n: int) -> str:
    return f"{n:,}" if n else "?"


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n else ""


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _params_text(p: Any, *, with_system: bool = True) -> str:
    parts = []
    if p.HasField("temperature"):
        parts.append(f"temperature={p.temperature:.3g}")
    if p.HasField("top_p"):
        parts.append(f"top_p={p.top_p:.3g}")
    if p.HasField("max_tokens"):
        parts.append(f"max_tokens={p.max_tokens}")
    if p.stop:
        parts.append("stop=" + ",".join(repr(s) for s in p.stop))
    if with_system and p.HasField("system_prompt"):
        prompt = " ".join(p.system_prompt.split())
        parts.append(f"system={prompt[:40] + '…' if len(prompt) > 40 else prompt!r}")
    return " ".join(parts)


# -- models ----------------------------------------------------------------------------


def _capabilities(m: models_pb2.Model) -> str:
    c = m.capabilities
    flags = [
        ("stream", c.streaming),
        ("system", c.system_prompt),
        ("tools", c.tools),
        ("vision", c.vision),
        ("json", c.json_mode),
    ]
    return ",".join(name for name, on in flags if on)


@models_app.callback(invoke_without_command=True)
def _models_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # `byok models` lists them
        models_ls(ctx)


@models_app.command("ls")
def models_ls(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List the configured routes (* marks the default)."""
    with connect(ctx) as client:
        rows = list(client.list_models(page_size=1000))
    if _json(ctx, json_flag, rows):
        return
    table = _table("KEY", "MODEL", "SOURCE", "ALLOWED", "CONTEXT", "P50", "TTFT", "TOK/S", "ERR")
    for m in rows:
        source = "local" if m.source.local else f"{m.provider} {m.source.base_url_host}".strip()
        if m.quantization:
            source += f" {m.quantization} {_size(m.size_bytes)}".rstrip()
        s = m.stats
        table.add_row(
            m.route_key + (" *" if m.is_default else ""),
            m.model_id,
            source,
            "yes" if m.allowed else "no",
            _tokens(m.context_window),
            _seconds(s.p50_latency),
            _seconds(s.p50_time_to_first_token),
            f"{s.output_tokens_per_second:.1f}" if s.sample_count else "-",
            f"{s.error_rate:.0%}" if s.sample_count else "-",
        )
    _print(table)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Route key or models/<key>.")],
    json_flag: JsonFlag = False,
) -> None:
    """Show one route with its capabilities and live figures."""
    with connect(ctx) as client:
        m = client.get_model(key)
    if _json(ctx, json_flag, m):
        return
    s = m.stats
    lines = [
        f"{m.name}  {m.provider}/{m.model_id}" + ("  (default)" if m.is_default else ""),
        f"allowed: {'yes' if m.allowed else 'no (ALLOWED_MODELS)'}",
        "source: " + ("local" if m.source.local else m.source.base_url_host),
        f"capabilities: {_capabilities(m)}",
        f"context window: {_tokens(m.context_window)} tokens",
    ]
    if m.quantization:
        lines.append(f"weights: {m.quantization}, {_size(m.size_bytes) or 'size unknown'}")
    window = _seconds(s.window)
    if s.sample_count:
        lines.append(
            f"last {window}: {s.sample_count} turns, p50 {_seconds(s.p50_latency)}, "
            f"ttft {_seconds(s.p50_time_to_first_token)}, "
            f"{s.output_tokens_per_second:.1f} tok/s, {s.error_rate:.0%} errors"
        )
    else:
        lines.append(f"last {window}: no turns")
    for line in lines:
        typer.echo(line)


# -- model profiles --------------------------------------------------------------------


def _profile_rows(rows: list[models_pb2.ModelProfile]) -> None:
    table = _table("ID", "NAME", "ROUTE", "PARAMS")
    for p in rows:
        table.add_row(_short(p.name), p.display_name, p.model_key, _params_text(p.params))
    _print(table)


@profiles_app.command("ls")
def profiles_ls(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List model profiles, newest first."""
    with connect(ctx) as client:
        rows = list(client.list_model_profiles(page_size=1000))
    if _json(ctx, json_flag, rows):
        return
    if not rows:
        _note("no model profiles")
        return
    _profile_rows(rows)


@profiles_app.command("create")
def profiles_create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Route key (MODEL_ROUTE_<KEY>).")],
    profile_id: Annotated[str, typer.Option("--id", help="Choose the profile's id.")] = "",
    name: Annotated[str, typer.Option("--name", help="Display name.")] = "",
    description: Annotated[str, typer.Option("--description")] = "",
    system: System = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    stop: Stop = None,
    json_flag: JsonFlag = False,
) -> None:
    """Create a model profile; prints its name."""
    params = generation_params(
        system_prompt=system,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop or (),
    )
    with connect(ctx) as client:
        profile = client.create_model_profile(
            model, display_name=name, description=description, params=params, profile_id=profile_id
        )
    if not _json(ctx, json_flag, profile):
        typer.echo(profile.name)


@profiles_app.command("show")
def profiles_show(ctx: typer.Context, profile: ProfileArg, json_flag: JsonFlag = False) -> None:
    """Show a model profile."""
    with connect(ctx) as client:
        p = client.get_model_profile(profile)
    if _json(ctx, json_flag, p):
        return
    typer.echo(f"{p.name}  {p.display_name}".rstrip())
    if p.description:
        typer.echo(p.description)
    typer.echo(f"route: {p.model_key}")
    if p.params.HasField("system_prompt"):
        typer.echo(f"system prompt: {p.params.system_prompt}")
    rest = _params_text(p.params, with_system=False)
    typer.echo(f"params: {rest or '(provider defaults)'}")


@profiles_app.command("update")
def profiles_update(
    ctx: typer.Context,
    profile: ProfileArg,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Route key.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    system: System = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    stop: Stop = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear", help="Unset a parameter: system, temperature, top_p, max_tokens, stop."
        ),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Change the given fields of a model profile."""
    from byok.client import cli

    changes: dict[str, Any] = {}
    for field, value in (
        ("system_prompt", system),
        ("temperature", temperature),
        ("top_p", top_p),
        ("max_tokens", max_tokens),
        ("stop", stop),
    ):
        if value is not None:
            changes[field] = value
    aliases = {"system": "system_prompt", "top-p": "top_p", "max-tokens": "max_tokens"}
    for item in clear or []:
        field = aliases.get(item, item)
        if field not in ("system_prompt", "temperature", "top_p", "max_tokens", "stop"):
            cli.fail(f"--clear takes system, temperature, top_p, max_tokens or stop, not {item!r}")
        changes[field] = None
    if model is None and name is None and description is None and not changes:
        cli.fail("nothing to change; give --model, --name, --description or a parameter")
    with connect(ctx) as client:
        p = client.update_model_profile(
            profile, model_key=model, display_name=name, description=description, **changes
        )
    if not _json(ctx, json_flag, p):
        typer.echo(f"updated {p.name}")


@profiles_app.command("rm")
def profiles_rm(
    ctx: typer.Context,
    profiles: Annotated[list[str], typer.Argument(help="Profile ids or names.")],
) -> None:
    """Delete model profiles (each is unlinked from every space)."""
    with connect(ctx) as client:
        for target in profiles:
            client.delete_model_profile(target)
            typer.echo(f"deleted {profile_name(target)}")


# -- spaces ----------------------------------------------------------------------------


@spaces_app.command("ls")
def spaces_ls(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List spaces, newest first."""
    with connect(ctx) as client:
        rows = list(client.list_spaces(page_size=1000))
    if _json(ctx, json_flag, rows):
        return
    if not rows:
        _note("no spaces")
        return
    table = _table("ID", "NAME", "CONVERSATIONS", "PROFILES", "DEFAULT")
    for s in rows:
        table.add_row(
            _short(s.name),
            s.display_name,
            str(s.conversation_count),
            ",".join(_short(p) for p in s.model_profiles),
            _short(s.default_model_profile),
        )
    _print(table)


@spaces_app.command("create")
def spaces_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Display name.")],
    space_id: Annotated[str, typer.Option("--id", help="Choose the space's id.")] = "",
    description: Annotated[str, typer.Option("--description")] = "",
    json_flag: JsonFlag = False,
) -> None:
    """Create a space; prints its name."""
    with connect(ctx) as client:
        space = client.create_space(name, description=description, space_id=space_id)
    if not _json(ctx, json_flag, space):
        typer.echo(space.name)


def _show_space(s: spaces_pb2.Space) -> None:
    typer.echo(f"{s.name}  {s.display_name}")
    if s.description:
        typer.echo(s.description)
    typer.echo(f"conversations: {s.conversation_count}")
    profiles = [
        _short(p) + (" (default)" if p == s.default_model_profile else "") for p in s.model_profiles
    ]
    typer.echo(f"profiles: {', '.join(profiles) or '(none)'}")


@spaces_app.command("show")
def spaces_show(ctx: typer.Context, space: SpaceArg, json_flag: JsonFlag = False) -> None:
    """Show a space with its profiles."""
    with connect(ctx) as client:
        s = client.get_space(space)
    if not _json(ctx, json_flag, s):
        _show_space(s)


@spaces_app.command("update")
def spaces_update(
    ctx: typer.Context,
    space: SpaceArg,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    default: Annotated[
        str | None,
        typer.Option("--default", help="Default profile (must be linked); '' clears it."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Change a space's name, description or default profile."""
    from byok.client import cli

    if name is None and description is None and default is None:
        cli.fail("nothing to change; give --name, --description or --default")
    with connect(ctx) as client:
        s = client.update_space(
            space, display_name=name, description=description, default_model_profile=default
        )
    if not _json(ctx, json_flag, s):
        typer.echo(f"updated {s.name}")


@spaces_app.command("rm")
def spaces_rm(
    ctx: typer.Context,
    space: SpaceArg,
    force: Annotated[
        bool, typer.Option("--force", help="Also delete the space's conversations.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
) -> None:
    """Delete a space; one with conversations needs --force, which deletes them."""
    from byok.client import cli

    name = space_name(space)
    with connect(ctx) as client:
        if force and not yes:
            count = client.get_space(name).conversation_count
            if count:
                if not sys.stdin.isatty():
                    cli.fail(f"not deleting {name} and {count} conversations; pass --yes")
                if not typer.confirm(f"delete {name} and its {count} conversations?"):
                    cli.fail(f"{name} not deleted")
        client.delete_space(name, force=force)
    typer.echo(f"deleted {name}")


@spaces_app.command("link")
def spaces_link(
    ctx: typer.Context,
    space: SpaceArg,
    profile: ProfileArg,
    default: Annotated[
        bool, typer.Option("--default", help="Also make it the space's default.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Link a model profile to a space."""
    with connect(ctx) as client:
        s = client.link_model_profile(space, profile, make_default=default)
    if not _json(ctx, json_flag, s):
        _show_space(s)


@spaces_app.command("unlink")
def spaces_unlink(
    ctx: typer.Context, space: SpaceArg, profile: ProfileArg, json_flag: JsonFlag = False
) -> None:
    """Unlink a model profile from a space (clearing the default if it was)."""
    with connect(ctx) as client:
        s = client.unlink_model_profile(space, profile)
    if not _json(ctx, json_flag, s):
        _show_space(s)


# -- provider keys ---------------------------------------------------------------------


@keys_app.command("set")
def keys_set(
    ctx: typer.Context,
    provider: Annotated[str, typer.Argument(help="openai, or a PROVIDER_<P> name.")],
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="The key. Omit it to be prompted (keeps it out of your shell history).",
        ),
    ] = None,
) -> None:
    """Store your key for a provider; your chats on it use your key."""
    secret = key if key is not None else typer.prompt(f"{provider} key", hide_input=True)
    with connect(ctx) as client:
        stored = client.set_provider_key(provider, secret)
    _note(f"stored your {stored.provider} key (…{stored.last4})")


@keys_app.command("ls")
def keys_ls(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List your provider keys (last 4 characters only)."""
    with connect(ctx) as client:
        keys = client.list_provider_keys()
    if _json(ctx, json_flag, keys):
        return
    table = _table("provider", "key", "updated")
    for k in keys:
        table.add_row(k.provider, f"…{k.last4}", k.update_time.ToJsonString())
    _print(table)


@keys_app.command("rm")
def keys_rm(ctx: typer.Context, provider: Annotated[str, typer.Argument()]) -> None:
    """Remove your key for a provider."""
    with connect(ctx) as client:
        client.delete_provider_key(provider)
    _note(f"removed your {provider} key")
