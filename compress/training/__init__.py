"""The training loop every technique trains with (Accelerate, checkpoints, resume) and its progress bar."""
