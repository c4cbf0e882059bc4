"""`python -m grader`: the same command line as `vitgrade`."""

from grader.cli import main

raise SystemExit(main())
