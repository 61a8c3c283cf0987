"""`python -m metapo` runs the command line."""

from metapo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
