"""Built-in selector plugins, one module each."""
