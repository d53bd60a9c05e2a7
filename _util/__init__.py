"""Small private helpers shared by the stages (files, lazy imports, optional extras, progress bars, seeding,
what only the application sets up). Not part of clothprobe's API."""
