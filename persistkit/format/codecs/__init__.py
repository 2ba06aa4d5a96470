"""Model codecs (numpy, sklearn, sb3, torch, tree, bytes); each imported lazily."""
