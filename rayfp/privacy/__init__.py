"""Privacy you can measure and choose (docs/design.md §5): differentially private releases
(:mod:`rayfp.privacy.mechanism`), and a membership-inference audit (:mod:`rayfp.privacy.audit`).
numpy/scipy only: no torch, no Ray."""
