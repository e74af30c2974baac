"""The original walkthrough's Lambda function, kept as the benchmark's baseline."""
