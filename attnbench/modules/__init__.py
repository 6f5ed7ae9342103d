"""First-party attention modules, one small file each, ``Module(channels, **options)``.

They are *not* imported here for registration: attnbench's ``pyproject.toml`` lists them
under the ``attnbench.modules`` entry-point group, the same path third-party plugins use.
"""
