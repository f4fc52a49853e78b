"""Example pvc plugins (see docs/plugins.md)."""
