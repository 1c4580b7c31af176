"""The cloud layer: users, instance types and the public front doors (EC2 Query, OCCI)."""
