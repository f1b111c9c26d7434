"""The API's routes, one router per resource: notifications, the audit, the directory, health and metrics, the web
page, the codec server."""
