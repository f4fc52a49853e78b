"""Built-in fence plugins, one module each."""
