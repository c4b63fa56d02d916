"""`python -m pipeline.validate PATH` stays where users know it; the code is inspection/validate.py."""

from inspection.validate import main

if __name__ == "__main__":
    raise SystemExit(main())
