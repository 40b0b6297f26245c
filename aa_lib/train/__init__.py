"""Training wrappers over TRL, one module per method (SFT, DPO, reward model); shared bits in `common`."""
