"""The service's front door: an HTTP API for other services (`app`), guarded by API keys (`keys`)."""
