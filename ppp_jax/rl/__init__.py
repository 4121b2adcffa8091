"""The RL math, pure functions: advantages, policy losses, KL, DAPO, the optimizer, token
batches and the jitted train step."""
