"""Every state pvc stores, each written once.

The members are ``StrEnum``: they compare equal to their strings and are written to JSON as
those strings, so stored documents and API answers read as they always did, while the code
names states (``VMState.START``) instead of repeating literals.
"""

from __future__ import annotations

from enum import StrEnum

from pvccore.errors import ValidationError


class DaemonState(StrEnum):
    """A node daemon's life: ``dead`` is declared by the cluster, ``fenced`` once it is confirmed off."""

    INIT = "init"
    RUN = "run"
    STOP = "stop"
    DEAD = "dead"
    FENCED = "fenced"


class CoordinatorState(StrEnum):
    CLIENT = "client"  # not a coordinator
    SECONDARY = "secondary"
    TAKEOVER = "takeover"
    PRIMARY = "primary"
    RELINQUISH = "relinquish"


class DomainState(StrEnum):
    """Whether a node takes VMs: ``flush``/``unflush`` are requests its daemon carries out."""

    READY = "ready"
    FLUSH = "flush"
    FLUSHED = "flushed"
    UNFLUSH = "unflush"
    FENCE_FLUSH = "fence-flush"


#: domain states in which a node takes VMs (``unflush``: coming back from a flush)
ACCEPTING = (DomainState.READY, DomainState.UNFLUSH)


class VMState(StrEnum):
    """The one state field of a VM: the API writes the wanted state, the node daemon what it observed."""

    START = "start"
    SHUTDOWN = "shutdown"
    STOP = "stop"
    RESTART = "restart"
    MIGRATE = "migrate"
    MIGRATE_LIVE = "migrate-live"
    UNMIGRATE = "unmigrate"
    DISABLE = "disable"
    FAIL = "fail"


#: VM states in which the VM should be running on its node
RUNNING_STATES = frozenset({VMState.START, VMState.RESTART, VMState.MIGRATE, VMState.MIGRATE_LIVE,
                            VMState.UNMIGRATE})
#: the states an operator may ask for (``pvc vm start|shutdown|stop|restart|disable``, POST /vm/<vm>/state)
USER_VM_STATES = (VMState.START, VMState.SHUTDOWN, VMState.STOP, VMState.RESTART, VMState.DISABLE)
#: states a VM rests in: no action of a node daemon is pending
RESTING_STATES = frozenset({VMState.START, VMState.STOP, VMState.DISABLE, VMState.FAIL})
#: a migration state left with no migration record (the record ended): the VM simply runs
MIGRATION_STATES = frozenset({VMState.MIGRATE, VMState.MIGRATE_LIVE, VMState.UNMIGRATE})


class MigrationMethod(StrEnum):
    LIVE = "live"
    SHUTDOWN = "shutdown"
    DEFAULT = "default"  # live, falling back to shutdown


class MigrationKind(StrEnum):
    """What ``last_node`` becomes: ``migrate`` remembers the home, ``move`` and ``unmigrate`` clear it."""

    MIGRATE = "migrate"
    MOVE = "move"
    UNMIGRATE = "unmigrate"


class MigrationPhase(StrEnum):
    """In order; pvccore.node.migration says who writes which."""

    REQUESTED = "requested"
    PREPARE = "prepare"
    READY = "ready"
    SENT = "sent"
    STOPPED = "stopped"
    FAILED = "failed"


class HandoverPhase(StrEnum):
    """In the order a handover passes them (``failed`` can end it at any point); see pvccore.node.coordinator."""

    REQUESTED = "requested"
    RELINQUISH_READY = "relinquish-ready"
    TAKEOVER_READY = "takeover-ready"
    SERVICES_STOPPED = "services-stopped"
    IPS_ADDED = "ips-added"
    IPS_RELEASED = "ips-released"
    DONE = "done"
    FAILED = "failed"

    def reached(self, phase: "HandoverPhase") -> bool:
        """Whether this phase is ``phase`` or one after it on the way to ``done`` (never for ``failed``)."""
        order = list(HandoverPhase)
        return self is not HandoverPhase.FAILED and order.index(self) >= order.index(phase)


class FenceAction(StrEnum):
    """What the cluster does after a fence (``successful_fence``, ``failed_fence``)."""

    RECOVER = "recover"
    NONE = "none"


class FaultKind(StrEnum):
    """What needs an operator (``pvc cluster faults``)."""

    NODE_DEAD = "node-dead"  # declared dead, not fenced yet
    NODE_FENCED = "node-fenced"  # off until it boots and rejoins
    NODE_SILENT = "node-silent"  # silent in maintenance mode: not fenced
    FENCE_FAILED = "fence-failed"
    VM_FAILED = "vm-failed"
    VM_STOPPED = "vm-stopped"  # stopped for want of a node to run on; starts with its home's next ready
    ZOOKEEPER_DOWN = "zookeeper-down"  # one server of the ensemble does not answer


class FenceOutcome(StrEnum):
    """A node's fence status (``pvc cluster status``)."""

    FENCED = "fenced"
    SELF_FENCED = "self-fenced"
    FAILED = "failed"
    HELD = "held"  # silent, and not fenced: maintenance mode is on


def parse(enum: type[StrEnum], value, field_name: str):
    """``value`` as a member of ``enum``; a ValidationError naming the choices otherwise."""
    try:
        return enum(value)
    except ValueError:
        raise ValidationError(f"{field_name} must be one of {', '.join(enum)}; got {value!r}", field_name) from None
