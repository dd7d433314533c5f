"""`atft` subcommands. Each module here defines ``register(subparsers)`` which adds its parsers
and sets ``func`` (called with the parsed args, returns an exit code). Imports of heavy
libraries (torch, GX, polars) stay inside the command functions so ``atft --help`` is instant."""
