"""Domain services. Each takes a Session (and collaborators); none commits it."""
