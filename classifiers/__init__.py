"""Stage 2: classical heads on cached embeddings (see issue: cli fit). Empty until that stage lands."""
