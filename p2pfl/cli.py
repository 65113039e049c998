"""The `p2pfl` command: `keygen`, `node run` and `status` for the daemon, plus what higher layers add.

Higher layers add their subcommand groups through the `p2pfl.commands` entry-point group (the
emulator adds `sim`), so this package never imports them. The daemon commands import their modules
lazily: `p2pfl status` needs neither libp2p nor the node.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click


class _Commands(click.Group):
    """The own commands plus those of the `p2pfl.commands` entry points, loaded only when used.

    Loading `sim` imports the emulator (networkx, scikit-learn...), seconds that `p2pfl status` or a
    daemon start should not pay.
    """

    def _plugins(self) -> dict[str, Any]:
        return {entry.name: entry for entry in entry_points(group="p2pfl.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()
        return command


@click.group(cls=_Commands)
@click.version_option(package_name="p2pfl-mesh", prog_name="p2pfl")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Peer-to-peer decentralized learning."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _address_without_peer(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """`--addr` checked before any key is made: a multiaddr without /p2p/, as keygen appends its own."""
    from transport.libp2p.host import parse_multiaddrs

    try:
        (parsed,) = parse_multiaddrs([value.rstrip("/")])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if "p2p" in {protocol.name for protocol in parsed.protocols()}:
        raise click.BadParameter(f"{value!r} has a /p2p/ part; give the address alone (the peer ID is added)")
    return str(parsed)


@main.command()
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's data dir; its identity key is created there if it has none.",
)
@click.option(
    "--addr",
    default="/ip4/127.0.0.1/tcp/4001",
    show_default=True,
    callback=_address_without_peer,
    help="The address the node will listen on, for the printed bootstrap address.",
)
def keygen(data_dir: Path, addr: str) -> None:
    """Create (or show) the node's identity key; print its peer ID and a full multiaddr."""
    from transport.libp2p import KeyFileError, load_or_create_key_pair, peer_id_of
    from transport.libp2p.identity import KEY_FILE_NAME

    existed = (data_dir / KEY_FILE_NAME).exists()
    try:
        peer_id = peer_id_of(load_or_create_key_pair(data_dir))
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'existing' if existed else 'new'} identity in {data_dir / KEY_FILE_NAME}")
    click.echo(f"peer id: {peer_id}")
    click.echo(f"bootstrap address: {addr}/p2p/{peer_id}")
    click.echo("  (give it to other nodes as `bootstrap`, with the IP and port this node listens on)")


@main.group()
def node() -> None:
    """Run a node daemon."""


@node.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The node.toml to run.",
)
@click.option(
    "--fast-exit/--no-fast-exit",
    default=True,
    hidden=True,
    help="End the process at once after a clean stop (off when calling main() in-process).",
)
def node_run(config_path: Path, fast_exit: bool) -> None:
    """Run a node until SIGINT or SIGTERM (a second one forces the stop, exit code 3); a restart
    resumes from the data dir's checkpoint."""
    from p2pfl.daemon.config import load_config
    from p2pfl.errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc

    import trio

    from p2pfl.daemon.logs import configure_logging
    from p2pfl.daemon.runner import exit_now, run_daemon
    from p2pfl.errors import P2PFLError, sole_exception
    from transport.libp2p import KeyFileError

    configure_logging(config.log_level, config.log_format)
    try:
        try:
            trio.run(run_daemon, config)
        except BaseExceptionGroup as group:
            # An error raised inside trio nurseries (the transport's, the node's) arrives wrapped,
            # often several levels deep; a single one is reported below like a bare one.
            leaf = sole_exception(group)
            if not isinstance(leaf, (P2PFLError, KeyFileError, OSError)):
                raise
            raise leaf from None
    except ConfigError as exc:  # a setting only the machine can refuse (a device it lacks, a shard)
        logging.getLogger("p2pfl.daemon").error("invalid configuration", extra={"error": str(exc)})
        raise click.UsageError(str(exc)) from exc
    except (P2PFLError, KeyFileError) as exc:  # a bad checkpoint, a data dir in use, a bad key
        logging.getLogger("p2pfl.daemon").error("cannot start", extra={"error": str(exc)})
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # e.g. a listen or status port in use
        logging.getLogger("p2pfl.daemon").error("cannot run", extra={"error": str(exc)})
        raise click.ClickException(str(exc)) from exc
    if fast_exit:
        # Everything is stopped, checkpointed (fsynced) and closed. Interpreter teardown would push
        # the SIGTERM-to-exit time past what supervisors expect; nothing is left that needs it.
        exit_now(0)


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's data dir: the URL is read from its status.json.",
)
@click.option(
    "--url",
    help="The status server's base URL, e.g. http://127.0.0.1:9464; one that ends in /status or"
    " /metrics (as scraped by Prometheus) means that server's /status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw status document.")
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    callback=lambda ctx, param, value: _seconds(value),
    help="Seconds to wait for an answer.",
)
def status(data_dir: Path | None, url: str | None, as_json: bool, timeout: float) -> None:
    """Show a running node's status: round, accuracy, traffic and every peer."""
    if (data_dir is None) == (url is None):
        raise click.UsageError("give exactly one of --data-dir and --url")
    if data_dir is not None:
        url = _status_url(data_dir)
    elif not _is_http_url(url):
        raise click.BadParameter(f"{url!r} is not an http:// URL", param_hint="'--url'")
    assert url is not None
    endpoint = _status_endpoint(url)
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise click.ClickException(f"{endpoint} answered {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(
            f"no node answers at {endpoint} ({reason}); is the daemon running?"
        ) from None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{endpoint} did not answer JSON: {exc}") from exc
    not_status = f"{endpoint} did not answer a p2pfl status document"
    if not isinstance(document, dict):  # another service on that port, or a URL that is not a node's
        raise click.ClickException(f"{not_status}: a JSON {type(document).__name__}, not an object")
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    try:
        summary = _summary(document)
    except (AttributeError, TypeError, ValueError) as exc:  # a field of the wrong type
        raise click.ClickException(f"{not_status}: {exc}") from None
    click.echo(summary)


_MAX_TIMEOUT = 86400.0  # socket.settimeout overflows on far larger values


def _seconds(value: float) -> float:
    """`--timeout` as socket.settimeout takes it: finite, > 0 (0 would make the socket non-blocking and
    report a running node as down) and not absurdly large. Each of those raised a traceback."""
    if not 0 < value <= _MAX_TIMEOUT:  # also refuses NaN, which compares false either way
        raise click.BadParameter(f"must be > 0 and <= {_MAX_TIMEOUT:g} seconds, got {value}")
    return value


def _status_url(data_dir: Path) -> str:
    """The status URL in the data dir's status.json; any fault of that file is an error naming it."""
    path = data_dir / "status.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(
            f"{path} does not exist: no daemon is running with this data dir"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    if not isinstance(info, dict):
        raise click.ClickException(f"{path} is not a daemon's status file: it holds no JSON object")
    url = info.get("url")
    if url is None:
        raise click.ClickException(f"the daemon of {data_dir} (pid {info.get('pid')}) has no status endpoint")
    if not _is_http_url(url):
        raise click.ClickException(f"{path} is not a daemon's status file: url {url!r} is not an http:// URL")
    return str(url)


def _status_endpoint(url: str) -> str:
    """The /status URL of the status server at `url`, its base URL. A URL that names one of the
    server's endpoints already is taken to mean that server: users paste the /metrics URL their
    Prometheus scrapes, and asking for .../metrics/status got a 404."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    base, _, last = path.rpartition("/")
    if last in ("status", "metrics"):
        path = base
    return urllib.parse.urlunsplit(parts._replace(path=f"{path}/status"))


def _is_http_url(url: object) -> bool:
    """Whether `url` is something urlopen can query (it raises a bare ValueError on anything else)."""
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return False
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _summary(s: dict[str, Any]) -> str:
    def number(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, int | float) else "-"

    lines = [
        f"peer      {s.get('peer_id')}",
        f"state     {s.get('state')}  ({s.get('protocol')}, round {s.get('round')} of {s.get('rounds')},"
        f" this run from round {s.get('started_round')})",
        f"accuracy  {number(s.get('accuracy'), '.4f')}   loss {number(s.get('loss'), '.4f')}",
        f"traffic   in {_size(s.get('bytes_in'))}   out {_size(s.get('bytes_out'))}"
        f"   models rejected {s.get('models_rejected', 0)}"
        f"   messages rejected {s.get('messages_rejected', 0)}",
    ]
    checkpoint = s.get("checkpoint") or {}
    if checkpoint.get("enabled"):
        lines.append(
            f"checkpoint round {checkpoint.get('round')}  ({checkpoint.get('writes', 0)} written,"
            f" {checkpoint.get('failures', 0)} failed, {checkpoint.get('skipped', 0)} skipped as diverged)"
            f"  {checkpoint.get('path')}"
        )
    lines.append("listening on")
    lines.extend(f"  {addr}" for addr in s.get("addrs", []))
    peers = s.get("peers", [])
    lines.append(f"peers ({len(peers)})")
    lines.extend(f"  {peer}" for peer in peers)
    banned = s.get("banned_peers") or {}
    if banned:
        lines.append(f"banned ({len(banned)})")
        lines.extend(f"  {peer}  ({number(left, '.0f')} s left)" for peer, left in banned.items())
    return "\n".join(lines)


def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value}"
