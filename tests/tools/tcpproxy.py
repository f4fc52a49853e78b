"""A TCP forwarder the test can cut and restore: a network partition between one daemon and ZooKeeper."""

import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.silent = False
        self._held: list[socket.socket] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()  # partitioned: nothing gets through
                continue
            if self.silent:
                self._held.append(client)  # the link is quiet: connected, and nothing ever answers
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while self.open and (data := src.recv(65536)):
                if not self.silent:
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()

    def restore(self):
        self.open = True

    def freeze(self):
        """A silent partition: connections stay up and nothing passes (no reset for the client to see)."""
        self.silent = True

    def thaw(self):
        """End a silent partition: connections held meanwhile are dropped, so clients reconnect."""
        self.silent = False
        for s in self._held:
            s.close()
        self._held.clear()

    def close(self):
        self.cut()
        self.server.close()
