"""MLflow: the store (opening, checking, reading), one run's record (params, tags, per-epoch metrics, config,
model), the runs that were abandoned, and a recorded run's config read back as data."""
