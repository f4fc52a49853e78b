"""The libvirt layer: one node's hypervisor, the same code for QEMU/KVM and libvirt's test driver.

Whether a hypervisor can live-migrate is read from its capabilities
(``<migration_features><live/>``), not from its name: the test driver reports
none and so takes the shutdown + start path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from pvccore.domain.domainxml import parse_domain_xml
from pvccore.errors import ValidationError

log = logging.getLogger(__name__)

# libvirt prints every error to stderr by default; we raise them instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

class HypervisorError(Exception):
    """A libvirt operation failed; the message is libvirt's, fit for a VM's ``reason``."""


@dataclass(frozen=True)
class Domain:
    name: str
    running: bool
    memory_mib: int
    vcpus: int


class Hypervisor:
    """One libvirt connection with the operations the node daemon needs.

    Thread-safe: libvirt connections are; the lock only guards reconnection.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------

    def open(self) -> "Hypervisor":
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
        return self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                self.open()
            return self._conn

    def can_live_migrate(self) -> bool:
        caps = ET.fromstring(self.conn.getCapabilities())
        return caps.find("host/migration_features/live") is not None

    # -- figures ----------------------------------------------------------------------

    def domains(self) -> dict[str, Domain]:
        out = {}
        for dom in self.conn.listAllDomains():
            try:
                state, max_kib, _cur, vcpus, _t = dom.info()
                out[dom.name()] = Domain(dom.name(), state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                                                               libvirt.VIR_DOMAIN_BLOCKED), max_kib // 1024, vcpus)
            except libvirt.libvirtError:  # undefined between list and info
                continue
        return out

    def figures(self, domains: dict[str, Domain] | None = None) -> dict:
        """Memory, CPU and load figures of this node, as published by keepalive."""
        domains = self.domains() if domains is None else domains
        _model, total_mib, cpus, *_ = self.conn.getInfo()
        running = [d for d in domains.values() if d.running]
        used_by_vms = sum(d.memory_mib for d in running)
        try:
            host_free = self.conn.getFreeMemory() // (1024 * 1024)
        except libvirt.libvirtError:
            host_free = 0
        # The test driver reports no free memory: count what its running VMs take.
        free = max(0, min(host_free, total_mib - used_by_vms) if host_free else total_mib - used_by_vms)
        return {
            "memory_total_mib": total_mib,
            "memory_free_mib": free,
            "memory_used_mib": total_mib - free,
            "cpu_count": cpus,
            "load_1m": os.getloadavg()[0],
            "vcpus_allocated": sum(d.vcpus for d in running),
            "running_vms": tuple(sorted(d.name for d in running)),
        }

    # -- lifecycle -----------------------------------------------------------------------

    def _dom(self, name: str, conn: libvirt.virConnect | None = None) -> libvirt.virDomain | None:
        try:
            return (conn or self.conn).lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(str(exc)) from exc

    def is_running(self, name: str) -> bool:
        dom = self._dom(name)
        return bool(dom and dom.isActive())

    def define(self, xml: str) -> None:
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"define failed: {exc}") from exc

    def start(self, name: str, xml: str) -> None:
        """Define (or redefine) from ``xml`` and start; already running is fine.

        A stopped definition here with the same UUID under another name is this VM's before a rename
        (``pvc vm rename``): it is undefined first, as libvirt keeps one definition per UUID.
        """
        dom = self._dom(name)
        if dom is not None and dom.isActive():
            return
        self._drop_old_name(name, xml)
        self.define(xml)
        try:
            self.conn.lookupByName(name).create()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"start failed: {exc}") from exc

    def _drop_old_name(self, name: str, xml: str) -> None:
        try:
            old = self.conn.lookupByUUIDString(parse_domain_xml(xml).uuid)
        except (libvirt.libvirtError, ValidationError):
            return  # none (or XML libvirt will refuse below, saying why)
        if old.name() != name and not old.isActive():
            log.info("VM %s: undefining its stopped definition under its old name %s", name, old.name())
            try:  # its UEFI variables stay for the new name's definition (the same VM)
                old.undefineFlags(getattr(libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0))
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"undefining the old name {old.name()} failed: {exc}") from exc

    def destroy(self, name: str) -> None:
        dom = self._dom(name)
        if dom is None or not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise HypervisorError(f"stop failed: {exc}") from exc

    def shutdown(self, name: str, timeout: float, stopping: threading.Event | None = None) -> bool:
        """Ask the guest to shut down; destroy it after ``timeout``. True if it went gracefully."""
        dom = self._dom(name)
        if dom is None or not dom.isActive():
            return True
        try:
            dom.shutdown()
        except libvirt.libvirtError as exc:
            log.warning("graceful shutdown of %s refused (%s); stopping it", name, exc)
        deadline = time.monotonic() + timeout
        waiter = stopping or threading.Event()
        delay = 0.05
        while dom.isActive():
            if time.monotonic() >= deadline:
                self.destroy(name)
                return False
            # Guests give no event we can wait on through every driver: poll with a deadline.
            waiter.wait(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        return True

    def undefine(self, name: str) -> None:
        dom = self._dom(name)
        if dom is None:
            return
        try:
            # A handle follows the UUID: if the domain was renamed meanwhile (pvc vm rename, then a start under
            # the new name), this is no longer the domain asked for.
            if self.conn.lookupByUUID(dom.UUID()).name() != name:
                return
        except libvirt.libvirtError:
            return  # gone meanwhile
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"undefine failed: {exc}") from exc

    def migrate_live(self, name: str, dest_uri: str, timeout: float, max_downtime_ms: int = 0) -> None:
        """Peer-to-peer live migration to ``dest_uri``; the domain ends persistent there and gone here.

        The VM is paused at the end for at most ``max_downtime_ms`` (0: libvirt's default). A KVM guest
        that dirties memory faster than the link copies it is throttled (auto-converge) until the
        rest fits in that pause: the migration ends, with the guest slower meanwhile. Post-copy would
        not slow it, but a link lost during post-copy leaves the VM's memory split between two hosts
        and the VM lost; auto-converge never puts the VM anywhere but on one whole host.
        """
        # A connection of its own: libvirtd serves at most max_client_requests (5 by default) calls of a
        # connection at once, so migrations in flight on the shared one would hold up every other call
        # of this daemon (the reconcile's domain list, the keepalive's figures) until one ends.
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
        try:
            self._migrate_live(conn, name, dest_uri, timeout, max_downtime_ms)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _migrate_live(self, conn: libvirt.virConnect, name: str, dest_uri: str, timeout: float,
                      max_downtime_ms: int) -> None:
        dom = self._dom(name, conn)
        if dom is None or not dom.isActive():
            raise HypervisorError(f"{name} is not running here")
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_AUTO_CONVERGE)
        if max_downtime_ms:
            try:
                dom.migrateSetMaxDowntime(max_downtime_ms)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot set the migration downtime to {max_downtime_ms} ms: {exc}") from exc
        # libvirt has no overall migration timeout: abort the job from a timer.
        watchdog = threading.Timer(timeout, self._abort_job, args=(dom,))
        watchdog.daemon = True
        watchdog.start()
        try:
            dom.migrateToURI3(dest_uri, {}, flags)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"live migration failed: {exc}") from exc
        finally:
            watchdog.cancel()

    @staticmethod
    def _abort_job(dom: libvirt.virDomain) -> None:
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
