"""pvc command-line client (installed as ``pvccli``)."""
