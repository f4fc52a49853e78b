"""Restrict an existing cluster's znodes to one ZooKeeper identity (a one-off, when adopting ``zookeeper_auth``).

``python3 -m pvccore.zk.acl --zookeeper HOSTS --root /pvc`` with ``PVC_ZOOKEEPER_AUTH=digest:USER:PASSWORD``
in the environment (never on the command line, where ``ps`` shows it) sets, on the root and every znode
under it, an ACL that gives that identity every permission and nobody else any. It authenticates as
that identity first, so it keeps its own access; running it twice changes nothing more. The operator
guide ("ZooKeeper authentication") says when to run it.
"""

from __future__ import annotations

import argparse
import os
import sys

from kazoo.exceptions import NoNodeError

from pvccore.errors import ValidationError
from pvccore.zk.schema import Schema
from pvccore.zk.auth import AUTH_ENV, auth_options
from pvccore.zk.store import Store


def restrict(store: Store, acl: list) -> int:
    """Set ``acl`` on the store's root and everything under it; return how many znodes were set."""
    count, todo = 0, [store.paths.root]
    while todo:
        path = todo.pop()
        try:
            store.client.set_acls(path, acl)
            todo.extend(f"{path}/{child}" for child in store.client.get_children(path))
        except NoNodeError:  # an ephemeral or lock entry that went away meanwhile
            continue
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pvccore.zk.acl", description=__doc__.split("\n")[0])
    parser.add_argument("--zookeeper", default="127.0.0.1:2181", help="ZooKeeper connection string")
    parser.add_argument("--root", default="/pvc", help="the cluster's root path")
    args = parser.parse_args(argv)
    auth = os.environ.get(AUTH_ENV, "")
    try:
        Schema(args.root)
        if not auth:
            raise ValidationError(f"set {AUTH_ENV}=digest:USER:PASSWORD (the identity to restrict the tree to)")
        acl = auth_options(auth)["default_acl"]
    except ValidationError as exc:
        print(f"zkacl: error: {exc.message}", file=sys.stderr)
        return 2
    store = Store.connect(args.zookeeper, args.root, auth=auth)
    try:
        count = restrict(store, acl)
    finally:
        store.close()
    print(f"{count} znodes under {args.root} now readable and writable by {auth.split(':')[1]} only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
