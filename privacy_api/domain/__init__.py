"""The vocabulary every layer shares: domain errors, names, privacy units."""
