"""``pvc``: the command-line client. It talks only to the API."""

from __future__ import annotations

import click

from pvccore import __version__

from . import cluster, node, plugin, selector, vm
from .client import ApiError, Client
from .connection import resolve
from .output import Failure


class Root(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            raise Failure(exc.message) from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api", envvar="PVC_API_URL", help="API URL, e.g. http://10.0.0.254:7370 [env PVC_API_URL].")
@click.option("--key", envvar="PVC_API_KEY", help="API key [env PVC_API_KEY].")
@click.option("-c", "--connection", help="Named connection from the config file (~/.config/pvc/cli.toml).")
@click.version_option(__version__, prog_name="pvc")
@click.pass_context
def cli(ctx: click.Context, api: str | None, key: str | None, connection: str | None) -> None:
    """Manage a pvc cluster of KVM hypervisors."""
    try:
        url, key = resolve(api, key, connection)
    except ValueError as exc:
        raise Failure(str(exc)) from None
    ctx.obj = Client(url, key)


for group in (cluster.group, node.group, vm.group, selector.group, plugin.group):
    cli.add_command(group)
