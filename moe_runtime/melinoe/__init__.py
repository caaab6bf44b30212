"""MELINOE (arXiv 2602.11192): fine-tune a mixture-of-experts model so that each sequence reuses few
experts, predict those experts from the prompt, and serve the result through the expert cache.

``losses`` holds the two terms the fine-tune adds to the language-modelling loss: the soft-cache
simulation (expected misses per token of a cache of C slots) and rank matching against the frozen base
router.
"""
