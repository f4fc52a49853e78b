"""Built-in pvc plugins (installed as ``pvcplugins``), registered through the ``pvc.plugins`` entry points."""
