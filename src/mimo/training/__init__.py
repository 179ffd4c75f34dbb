"""Training: the seed's step functions, state, optimizers, gradient finalisation and the trainer."""
