"""Shell completion (bash, zsh, fish) through click's machinery; VM and node names come from the API.

``pvc completion bash`` prints the script to source (``eval "$(pvc completion bash)"``). While a
shell completes, the root command's callback has not run, so the client is built here from the
options typed so far (``--api``, ``--key``, ``--ca``, ``-c``), the environment and the config file,
as for any command. Any failure (no API, a bad key) completes nothing: a shell never shows an error.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from .client import Client
from .connection import resolve

SHELLS = ("bash", "zsh", "fish")
TIMEOUT = 2.0  # seconds: a completion must not hang the shell


def _client(ctx: click.Context) -> Client:
    params = ctx.find_root().params
    conn = resolve(params.get("api"), params.get("key"), params.get("connection"), params.get("ca"))
    return Client(conn.url, conn.key, ca=conn.ca, timeout=TIMEOUT)


def _names(listing: str):
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        try:
            rows = getattr(_client(ctx), listing)()
        except Exception:  # noqa: BLE001 - nothing to offer, never an error in the shell
            return []
        return [CompletionItem(r["name"]) for r in rows if r["name"].startswith(incomplete)]

    return complete


complete_vms, complete_nodes = _names("vms"), _names("nodes")
vm_argument = click.argument("vm", shell_complete=complete_vms)
node_argument = click.argument("node", shell_complete=complete_nodes)


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="bash|zsh|fish")
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script: eval "$(pvc completion bash)" (or zsh; for fish:
    pvc completion fish | source)."""
    click.echo(get_completion_class(shell)(ctx.find_root().command, {}, "pvc", "_PVC_COMPLETE").source())
