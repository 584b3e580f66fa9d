"""The paper's analyses: embedding filters, position-embedding similarity, attention distance and rollout."""
