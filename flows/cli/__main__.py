"""`python -m flows.cli`: the same as `kristalctl`."""

from flows.cli import main

main()
