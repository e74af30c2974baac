"""Benchmarks: email-checker against the original walkthrough's Lambda, side by side on DynamoDB Local."""
