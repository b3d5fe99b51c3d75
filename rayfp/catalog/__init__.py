"""The paper's 71 tasks from local copies of their 35 public datasets: the catalog (one YAML per
dataset), the selection rules, the check against the paper's figures, the manifest and the seed
that fingerprints them into a store (docs/catalog.md)."""
