"""``pvc``: the command-line client. It talks only to the API."""

from __future__ import annotations

import click

from pvccore import __version__

from . import cluster, node, plugin, selector, vm
from .client import ApiError, Client
from .complete import completion
from .connection import resolve
from .output import Failure


class Root(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            raise Failure(exc.message) from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api", help="API URL, e.g. http://10.0.0.254:7370 [env PVC_API_URL].")
@click.option("--key", help="API key [env PVC_API_KEY].")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False),
              help="CA (or self-signed certificate) of an HTTPS API, PEM [env PVC_API_CA].")
@click.option("-c", "--connection", help="Named connection from the config file (~/.config/pvc/cli.toml); "
                                         "flags override it, it overrides the environment.")
@click.version_option(__version__, prog_name="pvc")
@click.pass_context
def cli(ctx: click.Context, api: str | None, key: str | None, ca: str | None, connection: str | None) -> None:
    """Manage a pvc cluster of KVM hypervisors."""
    try:
        conn = resolve(api, key, connection, ca)
        ctx.obj = Client(conn.url, conn.key, ca=conn.ca)
    except (ValueError, OSError) as exc:  # unknown connection, unreadable config or CA file
        raise Failure(str(exc)) from None


for group in (cluster.group, node.group, vm.group, selector.group, plugin.group, completion):
    cli.add_command(group)
