"""Local development: DynamoDB Local, Lambda-shaped events, and a local event source mapping. Never deployed."""
