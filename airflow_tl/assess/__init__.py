"""Assessing a transfer before training: transferability scores and the strategy they advise."""
