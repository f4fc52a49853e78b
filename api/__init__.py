"""pvc REST API (installed as ``pvcapi``)."""
