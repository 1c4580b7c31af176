"""The EC2 Query front door: request authentication, the XML layer and the Starlette app."""
