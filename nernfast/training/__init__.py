"""Training: objectives, phases and the recipes composed from them."""
