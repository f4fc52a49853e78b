"""Built-in lifecycle plugins, one module each."""
