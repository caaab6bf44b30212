"""Expert-cache runtime for serving mixture-of-experts models from a small GPU (arrives in a later issue)."""
