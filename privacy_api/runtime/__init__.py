"""What a running instance holds (settings, app state): read by views and the edge;
services are handed what they need instead."""
