"""The scheduler: fires export definitions' schedules as run requests."""
