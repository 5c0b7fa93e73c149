"""The human side's data: studies, tasks, assignments and judgments (built by the study issues)."""
