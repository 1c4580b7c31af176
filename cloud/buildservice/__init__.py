"""The build service: recipes submitted over HTTP, queued in the state database, built by a
worker (``imagekit build-service serve``; see docs/author/build-service.md)."""
