"""The HTTP edge the views stand on: authentication, limits, error responses, headers."""
