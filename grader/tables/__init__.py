"""The instructor's tables: reading CSV exports (rosters, LMS gradebooks) and writing formula-safe CSVs."""
