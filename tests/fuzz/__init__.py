"""Property-based fuzzing of every topic's decode path and of the admin API's validation (issue 12)."""
