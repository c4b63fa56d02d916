"""`python -m pipeline.inspect PATH` stays where users know it; the code is inspection/inspect.py."""

from inspection.inspect import main

if __name__ == "__main__":
    raise SystemExit(main())
