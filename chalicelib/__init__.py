"""email-checker's deployed library: classification, record decoding, planning, writing, and the batch loop."""
