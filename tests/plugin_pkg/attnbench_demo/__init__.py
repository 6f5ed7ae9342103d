"""Example attnbench plugin: modules with the plain ``Module(channels)`` constructor."""
