"""The fingerprint model: spaces and additive counts, the sampling plans, bKLD and its baselines,
tasks in parts, bootstrap replicates and per-query confidence. numpy and scipy only."""
