"""Evaluation: held-out loss and exact-match accuracy (``loss``)."""

from .loss import exact_match_accuracy, heldout_loss

__all__ = ["heldout_loss", "exact_match_accuracy"]
