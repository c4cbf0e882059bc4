"""Grading runs, the top of the pipeline: one student (`grading`), a class (`run`), and what they write
(`output`, `gradebook`, `manual`). Import the module you need; this package imports nothing itself, so that
`vitgrade check` does not load the class-level machinery."""
